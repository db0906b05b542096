"""What every distiller of mgd shares: a frozen teacher kept in eval mode, and its own state apart from
the two networks' weights (what a checkpoint needs beside the student)."""
from __future__ import annotations

from torch import nn

__all__ = ["DistillerBase", "check_networks"]


def check_networks(t_net, s_net) -> None:
    for name, net in (("t_net", t_net), ("s_net", s_net)):
        if not isinstance(net, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(net).__name__}")


class DistillerBase(nn.Module):
    """Subclasses set ``t_net``, ``s_net`` and ``teacher_train_mode``."""

    _NETWORK_PREFIXES = ("t_net.", "s_net.")
    teacher_train_mode = False

    def train(self, mode: bool = True) -> "DistillerBase":
        super().train(mode)
        if not self.teacher_train_mode:
            self.t_net.train(False)  # frozen BN statistics, no dropout: the teacher is a fixed target
        return self

    def own_state_dict(self) -> dict:
        """The distiller's state without the teacher's and the student's weights."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(self._NETWORK_PREFIXES)}

    def load_own_state_dict(self, state: dict) -> None:
        """Inverse of :meth:`own_state_dict`; every non-network key must be present."""
        result = self.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(self._NETWORK_PREFIXES)]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"distiller state does not fit this distiller: missing {missing}, "
                               f"unexpected {result.unexpected_keys}")
