import pytest

from winclip.export.torch_winclip import windows_by_loops
from winclip.runtime.geometry import incidence_matrix, window_count, window_patch_indices, window_token_table


def test_vit_b16_plus_window_counts():
    assert window_count((15, 15), 2) == 196
    assert window_count((15, 15), 3) == 169


@pytest.mark.parametrize("grid,k", [((15, 15), 2), ((15, 15), 3), ((5, 7), 2), ((4, 4), 4)])
def test_windows_match_a_loop_over_corners(grid, k):
    assert window_patch_indices(grid, k).tolist() == windows_by_loops(grid, k)


def test_token_table_prepends_class_token_and_shifts_patches():
    table = window_token_table((3, 3), 2)
    assert table.tolist() == [[0, 1, 2, 4, 5], [0, 2, 3, 5, 6], [0, 4, 5, 7, 8], [0, 5, 6, 8, 9]]


def test_incidence_counts_windows_covering_each_patch():
    inc = incidence_matrix((15, 15), 3)
    cover = inc.sum(axis=0).reshape(15, 15)
    assert cover[0, 0] == 1 and cover[0, 1] == 2 and cover[7, 7] == 9
    assert inc.sum() == 169 * 9


def test_bad_scales_are_refused():
    with pytest.raises(ValueError):
        window_patch_indices((5, 5), 6)
    with pytest.raises(ValueError):
        window_patch_indices((5, 5), 2, stride=0)
