"""Update gdsu-fork itself: every later update's report carries a mark of the new engine code.

`Report.to_dict` runs inside the program, in the agent, when it sends each update's report to
`gdsu-fork update`. After this patch the report's title ends with "[self-updated engine]", which
shows that the updates after a self-update ran the new code.
"""

from gdsu_fork import Patch

patch = Patch("gdsu-fork: mark reports as sent by the self-updated engine")

patch.define(
    "gdsu_fork.report:Report.to_dict",
    '''
def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict with plain strings for the enums; the title marked."""
    return {
        "title": f"{self.title} [self-updated engine]",
        "outcome": str(self.outcome),
        "reason": self.reason,
        "changes": [{"name": c.name, "kind": str(c.kind)} for c in self.changes],
        "migrated": self.migrated,
        "reused": self.reused,
        "delta_bytes": self.delta_bytes,
        "timings": {k: round(v, 3) for k, v in self.timings.items()},
        "blockers": list(self.blockers),
    }
''',
)
