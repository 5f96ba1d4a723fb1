from gdsu_fork import Patch

patch = Patch("spinner v2")
patch.module("spinner", "v2/spinner.py")
