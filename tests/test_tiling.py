import numpy as np
import pytest

from derain.tiling import axis_spans, axis_weights, plan_tiles


@pytest.mark.parametrize(
    "length,tile,overlap",
    [(480, 256, 64), (1080, 512, 128), (1001, 256, 96), (300, 300, 32), (6000, 1024, 128), (130, 64, 64)],
)
def test_spans_cover_balanced_and_overlapping(length, tile, overlap):
    spans = axis_spans(length, tile, overlap, multiple=4)
    assert spans[0].start == 0 and spans[-1].stop == length
    assert len({s.size for s in spans}) == 1, "all tiles the same size: no thin last tile"
    assert all(s.size <= max(tile + 3, 4) for s in spans)
    if len(spans) > 1:
        assert all(s.size % 4 == 0 for s in spans)
        shared = [a.stop - b.start for a, b in zip(spans, spans[1:])]
        assert min(shared) >= min(overlap, tile // 2)


@pytest.mark.parametrize("length,tile,overlap", [(480, 256, 64), (1001, 256, 96), (90, 32, 16)])
def test_weights_partition_unity(length, tile, overlap):
    spans = axis_spans(length, tile, overlap)
    total = np.zeros(length)
    for span, weight in zip(spans, axis_weights(spans)):
        assert weight.min() >= 0 and weight.max() <= 1
        total[span.start : span.stop] += weight
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_tile_edges_inside_the_image_get_no_weight():
    spans = axis_spans(600, 256, 128)
    weights = axis_weights(spans)
    assert weights[0][-1] == 0 and weights[1][0] == 0
    assert weights[0][0] == 1, "image borders are not faded"


def test_2d_plan_partitions_unity():
    tiles = plan_tiles(150, 210, 64, 32, multiple=4)
    total = np.zeros((150, 210))
    for t in tiles:
        total[t.region] += t.weight
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
