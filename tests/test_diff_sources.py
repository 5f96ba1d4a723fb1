"""Where patches come from: two trees (package layout, --root) and git ranges (no checkout)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gdsu_fork.diff import diff_git, diff_paths
from gdsu_fork.errors import PatchError
from gdsu_fork.report import Change, ChangeKind


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


V1 = {
    "app/__init__.py": "",
    "app/model.py": "def greet(u):\n    return 'hi ' + u\n",
    "app/old.py": "def gone():\n    pass\n",
    "app/util/__init__.py": "",
    "app/util/text.py": "def up(s):\n    return s.upper()\n",
    "setup.py": "print('setup')\n",
    ".venv/lib/site.py": "x = 1\n",
    "app/__pycache__/model.cpython-311.py": "junk\n",
}
V2 = {
    **V1,
    "app/model.py": "def greet(u):\n    return 'hello ' + u\n",
    "app/util/text.py": "def up(s):\n    return s.upper()\n\ndef low(s):\n    return s.lower()\n",
    "app/new.py": "def fresh():\n    return 1\n",
    ".venv/lib/site.py": "x = 2\n",
    "app/__pycache__/model.cpython-311.py": "other junk\n",
}
del V2["app/old.py"]


def test_trees_map_paths_to_modules_by_package_layout(tmp_path):
    old = write_tree(tmp_path / "old", V1)
    new = write_tree(tmp_path / "new", V2)
    generated = diff_paths(old, new)
    assert [m.name for m in generated.modules] == [
        "app.model",
        "app.new",
        "app.old",
        "app.util.text",
    ]
    assert Change("app.util.text:low", ChangeKind.ADDED) in generated.changes
    assert Change("app.old:gone", ChangeKind.REMOVED) in generated.changes
    text = generated.text()
    assert "# app.new (app/new.py) added" in text
    assert "# app.old: removed; the running program keeps what it has loaded." in text


def test_root_names_modules_of_a_src_layout_and_ignores_files_outside(tmp_path):
    files1 = {"src/pkg/a.py": "A = 1\n", "tools/run.py": "x = 1\n"}
    files2 = {"src/pkg/a.py": "A = 2\n", "tools/run.py": "x = 2\n"}
    old, new = write_tree(tmp_path / "o", files1), write_tree(tmp_path / "n", files2)
    # Namespace package (no __init__.py): without --root "pkg" is not known to be a package.
    assert [m.name for m in diff_paths(old, new).modules] == ["a", "run"]
    assert [m.name for m in diff_paths(old, new, root="src").modules] == ["pkg.a"]
    assert [m.name for m in diff_paths(old, new, root=new / "src").modules] == ["pkg.a"]
    with pytest.raises(PatchError, match="--root nowhere: not a directory"):
        diff_paths(old, new, root="nowhere")


def test_two_files_are_named_from_the_new_file_place_on_disk(tmp_path):
    write_tree(tmp_path, {"pkg/__init__.py": "", "pkg/m.py": "x = 2\n", "m_v1.py": "x = 1\n"})
    generated = diff_paths(tmp_path / "m_v1.py", tmp_path / "pkg" / "m.py")
    assert [m.name for m in generated.modules] == ["pkg.m"]
    with pytest.raises(PatchError, match="one is a file, the other a directory"):
        diff_paths(tmp_path / "m_v1.py", tmp_path / "pkg")
    with pytest.raises(PatchError, match="no such file or directory"):
        diff_paths(tmp_path / "missing.py", tmp_path / "pkg" / "m.py")


def test_copy_sources_writes_files_beside_the_patch(tmp_path):
    old = write_tree(tmp_path / "old", V1)
    new = write_tree(tmp_path / "new", V2)
    (tmp_path / "out").mkdir()
    out = diff_paths(old, new).write(tmp_path / "out" / "p.py", copy_sources=True)
    text = out.read_text()
    assert "patch.module('app.model', 'p_sources/app/model.py')" in text
    assert (tmp_path / "out" / "p_sources" / "app" / "model.py").read_text() == V2["app/model.py"]


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with three commits: v1, a method change, a new field plus a new module."""
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "config", "user.email", "dev@example.org")
    git(tmp_path, "config", "user.name", "Dev")
    commits = [
        {
            "shop/__init__.py": "",
            "shop/cart.py": (
                "class Cart:\n    def __init__(self):\n        self.items = []\n\n"
                "    def total(self):\n        return sum(self.items)\n"
            ),
            "README.md": "shop\n",
        },
        {
            "shop/cart.py": (
                "class Cart:\n    def __init__(self):\n        self.items = []\n\n"
                "    def total(self):\n        return round(sum(self.items), 2)\n"
            ),
        },
        {
            "shop/cart.py": (
                "class Cart:\n    def __init__(self, currency='EUR'):\n        self.items = []\n"
                "        self.currency = currency\n\n"
                "    def total(self):\n        return round(sum(self.items), 2)\n"
            ),
            "shop/tax.py": "RATE = 0.2\n",
            "README.md": "shop, with taxes\n",
        },
    ]
    for number, files in enumerate(commits, 1):
        write_tree(tmp_path, files)
        git(tmp_path, "add", "-A")
        git(tmp_path, "commit", "-q", "-m", f"v{number}")
    return tmp_path


def test_git_range_reads_both_versions_without_checkout(repo):
    # The working tree says something else: the patch must come from the commits.
    (repo / "shop" / "cart.py").write_text("broken = (\n")
    generated = diff_git("HEAD~2..HEAD", repo=repo)
    assert [m.name for m in generated.modules] == ["shop.cart", "shop.tax"]
    assert generated.migrated == ["shop.cart:Cart"]
    assert "policies.AddDefault('currency', 'EUR')" in generated.text()
    assert generated.title == "git HEAD~2..HEAD"
    assert head_is(repo, "v3")

    one_step = diff_git("HEAD~2..HEAD~1", repo=repo)
    assert one_step.changes == [Change("shop.cart:Cart.total", ChangeKind.CHANGED)]
    assert one_step.migrated == []


def head_is(repo: Path, subject: str) -> bool:
    return git(repo, "log", "-1", "--format=%s") == subject


def test_git_paths_limit_and_root(repo):
    limited = diff_git("HEAD~2..HEAD", repo=repo, paths=["shop/tax.py"])
    assert [m.name for m in limited.modules] == ["shop.tax"]
    rooted = diff_git("HEAD~1..HEAD", repo=repo, root="shop")
    assert [m.name for m in rooted.modules] == ["cart", "tax"]


def test_git_errors_name_the_problem_and_the_fix(repo):
    with pytest.raises(PatchError, match=r"not a range; write REV1\.\.REV2"):
        diff_git("HEAD", repo=repo)
    with pytest.raises(PatchError, match=r"git .* failed: .*nosuchrev"):
        diff_git("nosuchrev..HEAD", repo=repo)


def test_git_three_dot_range_diffs_from_the_merge_base(repo):
    git(repo, "checkout", "-q", "-b", "feature", "HEAD~1")
    write_tree(repo, {"shop/promo.py": "def code():\n    return 'X'\n"})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "promo")
    generated = diff_git("main...feature", repo=repo)
    assert [m.name for m in generated.modules] == ["shop.promo"]


def test_sources_with_a_coding_cookie_are_decoded_as_python_would(tmp_path):
    old = write_tree(tmp_path / "o", {"m.py": "X = 1\n"})
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "m.py").write_bytes(b"# -*- coding: latin-1 -*-\nX = '\xe9'\n")
    (module,) = diff_paths(old, tmp_path / "n").modules
    assert module.new_source == "# -*- coding: latin-1 -*-\nX = 'é'\n"
