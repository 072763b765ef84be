"""hirune.nn.layers: the GroupNorm group count for small channel counts."""

from hirune.nn import norm_groups


def test_group_norm_groups_for_small_channel_counts():
    assert [norm_groups(c) for c in (3, 8, 16, 32, 48, 128, 192)] == [3, 8, 16, 32, 24, 32, 32]
