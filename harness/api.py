"""The one module a method, task or plugin imports: the write/read contract, the batch and
tokenizer types, the registries, the errors a user or a method can cause, and the losses a method
writes with. Everything here is re-exported from the engine module that owns it."""
from harness.contract import ROLE_NAMES, Example, Memory, Method, Query, Task
from harness.data import Batch, Codec, read_once
from harness.errors import ContractError, HarnessError, choices_error
from harness.pipeline import at_least_fp32, sequence_loss, target_loss
from harness.registry import register_method, register_task
from harness.typed import non_negative, positive

__all__ = ["ROLE_NAMES", "Batch", "Codec", "ContractError", "Example", "HarnessError", "Memory", "Method", "Query",
           "Task", "at_least_fp32", "choices_error", "non_negative", "positive", "register_method", "register_task",
           "read_once", "sequence_loss", "target_loss"]
