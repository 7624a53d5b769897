"""Shared fixtures: tiny tasks and backbones, offline, on CPU."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

from harness.backbone import build_backbone
from harness.typed import build
from harness.registry import discover, get_method, get_task

torch.set_num_threads(2)
discover()


def make_task(**params):
    cls = get_task("kv_retrieval")
    return cls(build(cls.Config, params, "task"))


TINY_BACKBONE = {"layers": 2, "hidden": 16, "heads": 2, "ffn": 32, "max_positions": 512}


def make_method(name, task, dtype=torch.float32, backbone=None, seed=0, **params):
    """A method of the registry on a tiny backbone of the architecture it needs."""
    torch.manual_seed(seed)
    cls = get_method(name)
    backbone = backbone or build_backbone({**TINY_BACKBONE, "arch": cls.archs[0]}, task.tokenizer.vocab_size)
    return cls(build(cls.Config, params, "method"), backbone).to(dtype)


@pytest.fixture
def compact_task():
    return make_task(format="compact", pairs=3, key_length=1, value_length=1, key_symbols=8, value_symbols=8)


@pytest.fixture
def paper_task():
    return make_task(format="paper", pairs=4)


def pytest_addoption(parser):
    parser.addoption("--harness-plugin", action="append", default=[],
                     help="import a module that registers methods or tasks before collection, so the "
                          "registry-wide tests (test_contract.py, test_devices.py) check them too")


def pytest_configure(config):
    from harness.registry import load_plugin
    for module in config.getoption("--harness-plugin"):
        load_plugin(module)
