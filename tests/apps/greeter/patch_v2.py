from gdsu_fork import Patch

patch = Patch("greeting v2")
patch.module("greeting", "v2/greeting.py")
