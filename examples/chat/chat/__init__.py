"""The chat bench server: a REST chat whose model module is updated live by gdsu-fork."""
