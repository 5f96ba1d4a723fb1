"""gdsu-supervise: runs a program with the gdsu-fork agent in it, and serves update requests."""
