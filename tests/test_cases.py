"""The shared behaviour cases (../shared/cases, or $LOOMFS_SHARED_CASES), one test each,
run against a fresh directory of the mount.  Each case prints ``FAIL [name]: ...`` and
exits 1 when the filesystem gets its behaviour wrong; its output becomes the failure."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.mount

CASES_DIR = Path(os.environ.get("LOOMFS_SHARED_CASES", REPO.parent / "shared" / "cases"))
CASE_TIMEOUT = float(os.environ.get("CASE_TIMEOUT", "600"))
CASE_ENV = {"CASE16_N": "20000"}


def find_cases():
    cases = sorted(path for path in CASES_DIR.glob("[0-9][0-9]-*")
                   if path.suffix in (".py", ".sh"))
    if not cases:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no cases in {CASES_DIR}"))]
    return cases


def interpreter(case):
    return [sys.executable] if case.suffix == ".py" else ["sh"]


@pytest.mark.deadline(CASE_TIMEOUT + 60)
@pytest.mark.parametrize("case", find_cases(), ids=lambda path: path.stem if path else "none")
def test_case(case, workdir):
    env = dict(os.environ, **CASE_ENV)
    try:
        done = subprocess.run(interpreter(case) + [str(case), str(workdir)], env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=CASE_TIMEOUT, cwd=workdir)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{case.name} still running after {CASE_TIMEOUT:g}s\n"
                    f"{exc.stdout or ''}{exc.stderr or ''}")
    assert done.returncode == 0, f"{case.name} exited {done.returncode}\n" \
                                 f"{done.stdout[-4000:]}{done.stderr[-4000:]}"
