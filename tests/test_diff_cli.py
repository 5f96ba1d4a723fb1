"""`gdsu-fork diff`: two trees, two files, a git range; exit codes and messages."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from apps.supervised import GREETER, Supervised

from gdsu_fork.cli import main

OLD = "class Cart:\n    def total(self):\n        return 1\n"
NEW = "class Cart:\n    def total(self):\n        return 2\n"


def trees(tmp_path: Path) -> tuple[Path, Path]:
    for version, text in (("old", OLD), ("new", NEW)):
        (tmp_path / version / "shop").mkdir(parents=True)
        (tmp_path / version / "shop" / "__init__.py").write_text("")
        (tmp_path / version / "shop" / "cart.py").write_text(text)
    return tmp_path / "old", tmp_path / "new"


def test_diff_trees_to_a_file(tmp_path, capsys):
    old, new = trees(tmp_path)
    out = tmp_path / "patch.py"
    assert main(["diff", str(old), str(new), "-o", str(out)]) == 0
    assert f"wrote {out}: changed shop.cart:Cart.total" in capsys.readouterr().err
    compile(out.read_text(), str(out), "exec")
    assert "patch.module('shop.cart', r'''class Cart:" in out.read_text()


def test_diff_files_to_stdout(tmp_path, capsys):
    old, new = trees(tmp_path)
    assert main(["diff", str(old / "shop" / "cart.py"), str(new / "shop" / "cart.py")]) == 0
    printed = capsys.readouterr().out
    assert "# shop.cart (shop/cart.py)" in printed
    compile(printed, "stdout", "exec")


def test_usage_errors_exit_2_with_the_fix(tmp_path, capsys):
    old, _ = trees(tmp_path)
    assert main(["diff", str(old)]) == 2
    assert "diff needs OLD NEW" in capsys.readouterr().err
    assert main(["diff", str(old), str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert main(["diff", str(old), str(old), "--copy-sources"]) == 2
    assert "--copy-sources needs -o FILE" in capsys.readouterr().err


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, timeout=30)


def test_diff_git_range_with_paths_through_the_console_script(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "dev@example.org")
    git(repo, "config", "user.name", "Dev")
    (repo / "shop").mkdir()
    (repo / "shop" / "__init__.py").write_text("")
    (repo / "other.py").write_text("X = 1\n")
    for text, other in ((OLD, "X = 1\n"), (NEW, "X = 2\n")):
        (repo / "shop" / "cart.py").write_text(text)
        (repo / "other.py").write_text(other)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "step")
    script = Path(sys.executable).with_name("gdsu-fork")
    command = [str(script), "diff", "--git", "HEAD~1..HEAD", "--repo", str(repo), "-o", "p.py"]
    done = subprocess.run(
        [*command, "--", "shop"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "p.py").read_text()
    assert "patch.module('shop.cart'" in text
    assert "other" not in text


def test_identical_trees_give_an_empty_patch_and_say_so(tmp_path, capsys):
    old, _ = trees(tmp_path)
    assert main(["diff", str(old), str(old), "-o", str(tmp_path / "p.py")]) == 0
    assert "no Python module changed: the patch is empty" in capsys.readouterr().err
    compile((tmp_path / "p.py").read_text(), "p.py", "exec")


def test_a_generated_patch_updates_a_supervised_program(tmp_path):
    """Production flow: gdsu-fork diff, then gdsu-fork update, on a program under gdsu-supervise."""
    old, new = tmp_path / "old", tmp_path / "new"
    for tree, greeting in ((old, GREETER / "greeting.py"), (new, GREETER / "v2" / "greeting.py")):
        tree.mkdir()
        shutil.copy(greeting, tree / "greeting.py")
    app = Supervised(tmp_path)
    try:
        app.wait_running()
        assert app.get("/x") == "v1 /x"
        made = app.cli("diff", str(old), str(new), "-o", "patch.py")
        assert made.returncode == 0, made.stderr
        updated = app.cli("update", "patch.py", "--name", "greeter")
        assert updated.returncode == 0, updated.stdout + updated.stderr
        assert app.get("/x") == "v2 /x"
    finally:
        app.close()
