"""The two-tower model's visitor pooling: over each row's items only, as the padded sum."""

from __future__ import annotations

import numpy as np
import torch

from retailrec.models.two_tower import pooled_context


def test_pooling_over_items_only_is_the_padded_weighted_sum() -> None:
    torch.manual_seed(0)
    items_table = torch.nn.Parameter(torch.randn(9, 4))
    cat_table = torch.nn.Parameter(torch.randn(3, 4))
    item_cat = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2])
    # Padding is item 0 with weight 0, as the training examples hold it; one row is all padding.
    items = torch.tensor(
        [[3, 5, 0, 0], [1, 8, 2, 7], [0, 0, 0, 0], [6, 0, 0, 0]], dtype=torch.int32
    )
    weights = torch.tensor([[2.0, 1.0, 0, 0], [0.5, 0.5, 1.0, 3.0], [0, 0, 0, 0], [1.5, 0, 0, 0]])
    got = pooled_context(items_table, cat_table, item_cat, items, weights)
    long = items.long()
    w = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-9)
    expected = ((items_table[long] + cat_table[item_cat[long]]) * w.unsqueeze(-1)).sum(dim=1)
    torch.testing.assert_close(got, expected)
    assert np.array_equal(got[2].detach().numpy(), np.zeros(4, dtype=np.float32))
    grads = []
    for out in (expected, got):
        items_table.grad = cat_table.grad = None
        (out * torch.arange(1.0, 5.0)).sum().backward()
        grads.append((items_table.grad, cat_table.grad))
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(b.to_dense(), a)
    # Sparse, with a row for the items only: none for the padding's item 0 (or unused item 4).
    assert grads[1][0].is_sparse
    rows = set(grads[1][0].coalesce().indices()[0].tolist())
    assert rows == {1, 2, 3, 5, 6, 7, 8}
