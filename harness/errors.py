"""The one error type a user can cause; the CLI turns it into one line and exit code 2."""


class HarnessError(ValueError):
    """A bad input from the user: names the bad value and the valid choices."""


def choices_error(kind: str, value, valid) -> HarnessError:
    """Error for an unknown name among a fixed set of choices."""
    return HarnessError(f"unknown {kind} {value!r}; valid: {', '.join(sorted(map(str, valid)))}")


class ContractError(RuntimeError):
    """A method broke the write/read contract: names the method, the rule and what was seen."""
