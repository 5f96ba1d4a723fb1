"""Doubles the interest rate and gives every account a currency, migrating the live ones."""

from gdsu_fork import Patch, policies

patch = Patch("ledger: currencies, 2% interest")
patch.module("ledger", "v2/ledger.py")
patch.migrate("ledger:Account", policies.AddDefault("currency", "EUR"))


@patch.validate
def balances_kept(env):
    return all(old.balance == new.balance for old, new in env.pairs("ledger:Account"))
