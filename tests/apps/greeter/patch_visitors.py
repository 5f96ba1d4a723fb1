from gdsu_fork import Patch, policies

patch = Patch("visitors: count renamed hits")
patch.module("visitors", "v2/visitors.py")
patch.migrate("visitors:Visitor", policies.Rename(count="hits"))
