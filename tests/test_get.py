"""``sad.get``: reading models, records and tables back from the AnnData."""

from __future__ import annotations

import pytest

import scadversarial as sad


def test_get_reads_back_what_tl_wrote(pipeline68k):
    table = sad.get.attack_table(pipeline68k, "sad_pgd")
    assert table.columns.tolist() == ["layer", "eps", "flip_rate"]
    assert table["eps"].tolist() == [0.1, 0.5]
    rec = sad.get.attack_record(pipeline68k, "sad_pgd")
    assert table["flip_rate"].tolist() == [rec["metrics"]["flip_rate"][name] for name in rec["layers"]]
    assert sad.get.model(pipeline68k) is sad.tl.get_model(pipeline68k)
    assert "params" in sad.get.record(pipeline68k, "classifier")


def test_get_errors_name_the_producer_and_close_keys(pipeline68k):
    with pytest.raises(KeyError, match=r"did you mean 'classifier'"):
        sad.get.record(pipeline68k, "clasifier")
    with pytest.raises(KeyError, match=r"Run `sad\.tl\.evaluate` first"):
        sad.get.evaluation_table(pipeline68k)
    with pytest.raises(KeyError, match=r"did you mean 'sad_pgd'.*Run `sad\.tl\.attack`"):
        sad.get.attack_table(pipeline68k, "sad_pdg")
