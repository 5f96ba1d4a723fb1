"""Update gdsu-fork itself: every later update's report line says the engine was updated live.

`Report.summary` runs inside the program, in the agent, at the end of each update; its line is the
last progress event `gdsu-fork update` prints. After this patch the line starts with
"[self-updated engine]", which shows that the update after a self-update ran the new code.
"""

from gdsu_fork import Patch

patch = Patch("gdsu-fork: mark report lines as coming from the self-updated engine")

patch.define(
    "gdsu_fork.report:Report.summary",
    '''
def summary(self) -> str:
    """One line for people, marked: outcome, counts, pause."""
    timings = self.timings
    line = (
        f"[self-updated engine] {self.outcome}: {len(self.changes)} change(s), "
        f"{self.migrated} instance(s) migrated, pause {timings.get('pause', 0.0):.1f} ms, "
        f"total {timings.get('total', 0.0):.1f} ms"
    )
    if self.reason:
        line += f"\\nreason: {self.reason}"
    return line
''',
)
