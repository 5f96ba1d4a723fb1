"""A tiny bank ledger: the program the demo updates while it runs."""


class Account:
    def __init__(self, owner, balance, currency="EUR"):
        self.owner = owner
        self.balance = balance
        self.currency = currency

    def describe(self):
        return f"{self.owner}: {self.balance:.2f} {self.currency}"


ACCOUNTS = [Account("ada", 100.0), Account("bob", 50.0)]


def interest(account):
    return account.balance * 0.02
