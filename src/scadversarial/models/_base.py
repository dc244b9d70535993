"""Base class of every ``sad`` torch model, and the allow-list of model classes that can be loaded."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import nn

#: Model classes that :func:`~scadversarial.models.load_model` may build, by name. Loading never
#: imports or executes anything else: a config naming an unknown class is refused.
MODEL_CLASSES: dict[str, type[SadModel]] = {}


def register_model_class(cls: type[SadModel]) -> type[SadModel]:
    """Class decorator adding ``cls`` to :data:`MODEL_CLASSES`."""
    MODEL_CLASSES[cls.__name__] = cls
    return cls


class SadModel(nn.Module):
    """A torch module that can be rebuilt from a JSON-able config (no pickle).

    Subclasses store every constructor argument in ``self.config`` (JSON types only) and keep all
    learned or fixed arrays as parameters or buffers, so ``state_dict`` + ``config`` rebuild them.
    """

    kind: ClassVar[str] = "model"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = copy.deepcopy(config)

    def __deepcopy__(self, memo: dict) -> SadModel:
        """A deep copy without the registry id: a copy is another model, which saving or referencing registers anew.

        With the id, saving a modified copy would replace the original in the registry, and with it
        the model every AnnData referencing the original uses.
        """
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        state = {k: v for k, v in self.__dict__.items() if k != "_sad_id"}
        new.__dict__.update(copy.deepcopy(state, memo))
        return new

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SadModel:
        """Build an untrained model from ``config``."""
        return cls(**config)

    @property
    def device(self) -> torch.device:
        """Device of the model's first parameter or buffer."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")
