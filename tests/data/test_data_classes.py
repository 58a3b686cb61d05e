"""Class subsets (data.classes): relabelling, the merged rest class, its cap."""

from pathlib import Path

import pytest
import torch

from kdforge import api
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError
from kdforge.data.datasets import ArrayDataset
from kdforge.data.datasets.classes import REST_CLASS, select_classes
from tests.conftest import synthetic_config


def dataset():
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 3, 3])
    return ArrayDataset(torch.arange(10, dtype=torch.float32).view(10, 1), targets,
                        classes=["a", "b", "c", "d"])


def test_kept_classes_are_relabelled_in_the_order_given():
    sub = select_classes(dataset(), [3, 1])
    assert sub.classes == ["d", "b"] and sub.num_classes == 2
    assert sub.targets.tolist() == [1, 0, 1, 0, 0, 0]  # samples 1, 3, 5, 7, 8, 9
    batch = sub.__getitems__([0, 1, 5])
    assert batch["input"].view(-1).tolist() == [1.0, 3.0, 9.0]
    assert batch["target"].tolist() == [1, 0, 0]
    assert sub[1]["target"].item() == 0
    assert sub.subset([0, 5]).targets.tolist() == [1, 0]


def test_merged_rest_is_one_extra_class_capped_by_rest_ratio():
    sub = select_classes(dataset(), [0], rest="merge")
    assert sub.classes == ["a", REST_CLASS] and len(sub) == 10
    assert sub.targets.tolist() == [0, 1, 1, 1, 0, 1, 1, 1, 1, 1]
    capped = select_classes(dataset(), [0], rest="merge", rest_ratio=1.0)
    assert len(capped) == 4 and int((capped.targets == 1).sum()) == 2
    again = select_classes(dataset(), [0], rest="merge", rest_ratio=1.0)
    assert torch.equal(capped.base.inputs, again.base.inputs)  # the same draw every time


def test_bad_subsets_are_refused():
    with pytest.raises(ConfigError, match="not classes of this data set"):
        select_classes(dataset(), [4])
    with pytest.raises(ConfigError, match="distinct"):
        parse_config(synthetic_config(Path("/tmp"),
                                      data={"classes": [1, 1]}))
    with pytest.raises(ConfigError, match="set 'classes'"):
        parse_config(synthetic_config(Path("/tmp"),
                                      data={"rest": "merge"}))


def test_a_run_on_a_class_subset_has_that_many_classes(tmp_path):
    cfg = parse_config(synthetic_config(tmp_path, data={"classes": [2, 0]}))
    data = api.build_data(cfg)
    assert data.num_classes == 2
    assert set(data.train.targets.tolist()) == {0, 1} == set(data.test.targets.tolist())
    result = api.train(cfg, verbose=False)
    assert result.summary["test"]["accuracy"] >= 0
