"""Sweeps on a local Dask cluster over loopback: results land in the same layout, a failing run
is reported and the others finish."""
import json
import os
import textwrap

import pytest

from harness.cli import main
from tests.test_cli import TINY, summaries, write_suite

pytestmark = pytest.mark.slow   # a Dask cluster: the slow tier


def test_suite_on_a_local_dask_cluster(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_plugin.py").write_text(textwrap.dedent('''
        from harness.registry import register_method
        from methods.query_only import QueryOnly

        @register_method
        class Broken(QueryOnly):
            name = "broken_plugin"
            summary = "raises in write"

            def write(self, *args, **kwargs):
                raise RuntimeError("this method always fails")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    suite = write_suite(tmp_path, {**TINY, "runs": TINY["runs"] + [{"method": {"name": "broken_plugin"}}]})
    code = main(["--suite", suite, "--backend", "dask", "--jobs", "2", "--plugin", "broken_plugin",
                 "--out", str(tmp_path / "results"), "--cache", str(tmp_path / "cache"), "--quiet", "--device", "cpu"])
    assert code == 1
    assert "broken_plugin" in capsys.readouterr().err
    finished = {json.loads(p.read_text())["spec"]["method"]["name"] for p in summaries(tmp_path)}
    assert finished == {"gradmem", "full_context", "query_only"}
