"""Errors that the CLI and the UI turn into one-line messages.

Every error carries the value at fault and the fix, so the edge only has to print
``str(error)``. Library code raises these; nothing below the edge catches them.
"""

from __future__ import annotations


class RepairError(Exception):
    """An error the user can fix: ``problem`` names what failed and ``fix`` the next step."""

    exit_code = 1

    def __init__(self, problem: str, fix: str = "", *, stage: str | None = None, repo_id: str | None = None):
        self.problem = problem
        self.fix = fix
        self.stage = stage
        self.repo_id = repo_id
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = self.problem.rstrip(".") + "."
        if self.fix:
            text += " " + self.fix.rstrip(".") + "."
        return text


class ConfigError(RepairError):
    """An option value or a combination of options that cannot work."""

    exit_code = 2


class ModelSourceError(RepairError):
    """A model that cannot be found, downloaded or loaded."""


class DatasetError(RepairError):
    """A dataset that cannot be read, or has no usable rows."""


class RunFolderError(RepairError):
    """A run folder that belongs to another configuration or cannot be written."""


class HubError(RepairError):
    """A Hub request that failed: missing or read-only token, rejected repo, network."""


class JudgeError(RepairError):
    """A served judge that rejected the token or the request, does not serve the model, or kept failing."""


class StageError(RepairError):
    """A pipeline stage that failed for a reason other than bad input."""
