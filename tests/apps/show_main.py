"""Print how the program was started, as JSON, to check the bootstrap is invisible."""

import json
import sys

print(
    json.dumps(
        {
            "name": __name__,
            "file": __file__,
            "argv": sys.argv,
            "path0": sys.path[0],
            "globals": sorted(k for k in globals() if not k.startswith("__")),
            "main_is_us": sys.modules["__main__"].__dict__ is globals(),
            "agent_threads": [t.name for t in __import__("threading").enumerate()],
        }
    )
)
