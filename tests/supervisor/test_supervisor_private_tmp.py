"""A worker's private /tmp keeps what it needs below /tmp (code in a checkout or venv
under /tmp) and nothing else of the host's /tmp."""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap

import pytest

from tests.supervisor.util import PRELOAD, run
from tests.supervisor.workers import Calc
from warden.supervisor import Supervisor

MODULE = textwrap.dedent("""
    import os
    from tests.supervisor.workers import CalcImpl

    class TmpCalc(CalcImpl):
        def act(self, ctx, what, arg=0):
            if what == "sees_marker":
                return int(os.path.exists(os.path.join(os.path.dirname(__file__),
                                                       "..", "marker")))
            return super().act(ctx, what, arg)
""")


@pytest.mark.parametrize("method", ["fork", "zygote"])
def test_code_below_tmp_is_kept_and_the_rest_of_tmp_is_not(
        method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tempfile.mkdtemp(prefix="private-tmp-", dir="/tmp")  # below the host's /tmp
    try:
        os.chmod(base, 0o755)
        code = os.path.join(base, "code")
        os.mkdir(code, 0o755)
        with open(os.path.join(code, "tmp_calc_mod.py"), "w") as f:
            f.write(MODULE)
        with open(os.path.join(base, "marker"), "w") as f:
            f.write("host /tmp\n")
        monkeypatch.syspath_prepend(code)

        async def main() -> tuple[int, int]:
            async with Supervisor(start_method=method,
                                  zygote_preload=(*PRELOAD, "tmp_calc_mod")) as s:
                w = await s.spawn(Calc, "tmp_calc_mod:TmpCalc", profile="default")
                return await w.remote.square(7), await w.remote.act("sees_marker")

        squared, sees_marker = run(main())
        assert squared == 49  # its module, below /tmp, was imported
        assert sees_marker == 0  # the host's /tmp beside it is not there
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
        sys.modules.pop("tmp_calc_mod", None)
