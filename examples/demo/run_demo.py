"""Run the ledger, update it live with patch.py, and show the same objects before and after."""

import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import ledger  # noqa: E402

import gdsu_fork  # noqa: E402


def show(when):
    for account in ledger.ACCOUNTS:
        print(
            f"  {when:6} {account.describe():22} interest {ledger.interest(account):5.2f}  id {id(account):#x}"
        )


def main():
    stop = threading.Event()
    ticks = [0]

    def worker():  # the program keeps working while it is updated
        while not stop.is_set():
            for account in ledger.ACCOUNTS:
                account.describe()
            ticks[0] += 1
            stop.wait(0.001)

    thread = threading.Thread(target=worker, name="ledger-worker", daemon=True)
    thread.start()
    show("before")
    report = gdsu_fork.update(HERE / "patch.py")
    print(f"update: {report.summary()}")
    show("after")
    stop.set()
    thread.join(5)
    print(f"the worker thread ran {ticks[0]} rounds and was never restarted")
    return 0 if report.committed else 1


if __name__ == "__main__":
    sys.exit(main())
