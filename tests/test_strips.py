"""StripReader: window reads from full-width row chunks equal AlignedScene.read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import write_geotiff
from rasterio.transform import from_origin

from mfaf_cli.coreg import AlignedScene, grid_from_reference
from mfaf_cli.pipeline.strips import StripReader, chunk_edges, chunks_spanning, column_parts
from mfaf_cli.tiling.windows import Window, tile_windows


def _assert_reads_equal(reader: StripReader, read: Callable, windows: list[Window]) -> None:
    """Every window from the reader equals ``read`` (the scene's own window read)."""
    try:
        for w in windows:
            a, va = reader.read(w)
            b, vb = read(w)
            np.testing.assert_array_equal(va, vb)
            for m in b:
                np.testing.assert_array_equal(a[m], b[m])
    finally:
        reader.close()


def test_chunk_edges() -> None:
    assert chunk_edges([0, 48, 72], 64, 136) == [0, 48, 64, 72, 112, 136]
    assert chunk_edges([0], 64, 40) == [0, 40]


@pytest.mark.parametrize("threads", [0, 2])
def test_strip_reads_equal_window_reads(tmp_path: Path, threads: int) -> None:
    rng = np.random.default_rng(0)
    opt = rng.integers(1, 3000, (3, 150, 130)).astype("uint16")
    opt[:, 10:20, 30:50] = 0  # nodata patch
    t = from_origin(500_000.0, 4_500_000.0, 10.0, 10.0)
    o = write_geotiff(tmp_path / "o.tif", opt, transform=t, nodata=0)
    sar = rng.normal(-12, 3, (1, 80, 70)).astype("float32")  # 20 m: warped
    s = write_geotiff(
        tmp_path / "s.tif", sar, transform=from_origin(500_005.0, 4_500_005.0, 20.0, 20.0)
    )
    grid = grid_from_reference(o)
    windows = tile_windows(grid.height, grid.width, 64, 0.25)
    windows += [Window(130, 120, 64, 64), Window(-10, -5, 64, 64)]  # past the edges
    windows.sort(key=lambda w: (w.row_off, w.col_off))
    with AlignedScene({"optical": o, "sar": s}, grid) as scene:
        reader = StripReader(scene, [w.row_off for w in windows], 64, threads=threads, ahead=1)
        _assert_reads_equal(reader, scene.read, windows)


def test_column_parts_cut_at_block_edges() -> None:
    assert column_parts((0, 2048), 2, 512, 0) == [(0, 1024), (1024, 2048)]
    assert column_parts((0, 2048), 3, 512, 0) == [(0, 512), (512, 1536), (1536, 2048)]
    # a read grid that starts 40 columns left of the file: block edges at 40, 552, ...
    assert column_parts((0, 1100), 2, 512, 40) == [(0, 552), (552, 1100)]
    # more readers than block columns: one part per block column at most
    assert column_parts((0, 1024), 8, 512, 0) == [(0, 512), (512, 1024)]
    assert column_parts((100, 300), 2, 512, 0) == [(100, 300)]  # no block edge inside
    assert column_parts((0, 10), 4) == [(0, 2), (2, 5), (5, 8), (8, 10)]  # unblocked
    assert column_parts((0, 10), 1, 4) == [(0, 10)]


@pytest.mark.parametrize("threads", [2, 3])
def test_column_part_readers_equal_window_reads(tmp_path: Path, threads: int) -> None:
    """Readers that own column parts of each chunk (a tiled file: parts cut at its block
    edges) give every window exactly as the scene reads it, across the parts' seams."""
    import rasterio

    rng = np.random.default_rng(1)
    opt = rng.integers(1, 3000, (3, 100, 160)).astype("uint16")
    opt[:, 40:50, 60:70] = 0  # nodata across the seam between the first two parts
    t = from_origin(500_000.0, 4_500_000.0, 10.0, 10.0)
    o = tmp_path / "o.tif"
    profile = dict(driver="GTiff", width=160, height=100, count=3, dtype="uint16", crs="EPSG:32630",
                   transform=t, nodata=0, tiled=True, blockxsize=32, blockysize=32)  # fmt: skip
    with rasterio.open(o, "w", **profile) as ds:
        ds.write(opt)
    sar = rng.normal(-12, 3, (1, 50, 80)).astype("float32")
    s = write_geotiff(
        tmp_path / "s.tif", sar, transform=from_origin(500_000.0, 4_500_000.0, 20.0, 20.0)
    )
    grid = grid_from_reference(o)
    windows = tile_windows(grid.height, grid.width, 48, 0.25)
    windows += [Window(70, 130, 48, 48)]  # past the bottom-right corner: padded
    windows.sort(key=lambda w: (w.row_off, w.col_off))
    with AlignedScene({"optical": o, "sar": s}, grid) as scene:
        reader = StripReader(scene, [w.row_off for w in windows], 48, threads=threads, ahead=2)
        assert len(reader.parts) == threads
        assert all(a % 32 == 0 for a, _ in reader.parts)
        _assert_reads_equal(reader, scene.read, windows)


@pytest.mark.parametrize("threads", [0, 2])
def test_dropped_chunks_buffers_are_read_into_again(
    tmp_path: Path, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Later chunks read into the arrays of dropped ones (no fresh pages per chunk), and the
    windows still equal the scene's own reads."""
    rng = np.random.default_rng(2)
    opt = rng.integers(1, 3000, (2, 200, 60)).astype("uint16")
    o = write_geotiff(tmp_path / "o.tif", opt, nodata=0)
    grid = grid_from_reference(o)
    windows = tile_windows(grid.height, grid.width, 40, 0.5)  # chunks of 20 rows: one shape
    with AlignedScene({"optical": o}, grid) as scene:
        given: list[int] = []
        read = scene.read

        def spy(window: Window, out: dict | None = None) -> tuple:
            if out is not None:
                given.append(out["optical"].ctypes.data)
            return read(window, out=out)

        monkeypatch.setattr(scene, "read", spy)
        reader = StripReader(scene, [w.row_off for w in windows], 40, threads=threads, ahead=1)
        _assert_reads_equal(reader, read, windows)
    assert len(given) == len(reader.edges) - 1  # one read per chunk
    assert len(set(given)) <= 4 < len(given)  # a few buffers, reused


def test_striped_file_readers_take_whole_chunks(tmp_path: Path) -> None:
    """A striped file cannot be cut into column parts without decoding its strips twice;
    its strips are short, so the readers take whole chunks in turn instead."""
    import rasterio

    rng = np.random.default_rng(3)
    opt = rng.integers(1, 3000, (3, 120, 90)).astype("uint16")
    o = tmp_path / "o.tif"
    profile = dict(driver="GTiff", width=90, height=120, count=3, dtype="uint16", nodata=0,
                   crs="EPSG:32630", transform=from_origin(500_000.0, 4_500_000.0, 10.0, 10.0),
                   blockysize=2)  # fmt: skip
    with rasterio.open(o, "w", **profile) as ds:
        ds.write(opt)
        assert ds.block_shapes[0] == (2, 90)
    grid = grid_from_reference(o)
    windows = tile_windows(grid.height, grid.width, 40, 0.25)
    with AlignedScene({"optical": o}, grid) as scene:
        reader = StripReader(scene, [w.row_off for w in windows], 40, threads=2, ahead=3)
        assert reader.parts == [(0, 90)] and len(reader._pools) == 1
        assert reader._pools[0]._max_workers == 2
        _assert_reads_equal(reader, scene.read, windows)


def test_readers_handles_close_with_the_reader(tmp_path: Path) -> None:
    """A reader's threads open their own GDAL handles; closing the reader (once per column
    panel) closes them, so handles (~7 MB each, measured) do not pile up with the panels."""
    rng = np.random.default_rng(2)
    t = from_origin(500_000.0, 4_500_000.0, 10.0, 10.0)
    o = write_geotiff(tmp_path / "o.tif", rng.integers(1, 3000, (3, 64, 64)).astype("uint16"),
                      transform=t)  # fmt: skip
    s = write_geotiff(tmp_path / "s.tif", rng.normal(-12, 3, (1, 64, 64)).astype("float32"),
                      transform=t)  # fmt: skip
    grid = grid_from_reference(o)
    windows = tile_windows(grid.height, grid.width, 32, 0.25)
    with AlignedScene({"optical": o, "sar": s}, grid) as scene:
        opened = len(scene._all_handles)  # the caller's own, kept
        for _ in range(3):  # three "panels"
            reader = StripReader(scene, [w.row_off for w in windows], 32, threads=2, ahead=1)
            for w in windows:
                reader.read(w)
            assert len(scene._all_handles) > opened  # its threads opened handles
            reader.close()
            assert len(scene._all_handles) == opened
        assert scene.read(Window(0, 0, 8, 8))[1].all()  # the caller's handles still work


def test_dropped_chunks_arrays_serve_the_chunks_read_ahead(tmp_path: Path) -> None:
    """Chunks are dropped before the next window's chunks are fetched, so the reads ahead
    take the dropped arrays; an array whose height no chunk still to read has is let go,
    not pooled. Together: at most the chunks a window row spans plus those read ahead."""
    rng = np.random.default_rng(3)
    opt = rng.integers(1, 3000, (2, 392, 60)).astype("uint16")
    o = write_geotiff(tmp_path / "o.tif", opt, nodata=0)
    grid = grid_from_reference(o)
    windows = tile_windows(grid.height, grid.width, 64, 0.25)  # chunks of 48, 16, 32, 16 ...
    with AlignedScene({"optical": o}, grid) as scene:
        reader = StripReader(scene, [w.row_off for w in windows], 64, threads=1, ahead=2)
        heights = np.diff(reader.edges)
        assert list(heights[:4]) == [48, 16, 32, 16] and 48 not in heights[1:]
        held, pooled_first = [], []
        try:
            for w in windows:
                reader.read(w)
                for futures in list(reader._chunks.values()):  # the reads ahead done
                    [f.result() for f in futures]
                pooled = [a.shape[1] for v in reader._free.values() for a in v]
                held.append(len(reader._chunks) + len(pooled))
                to_read = set(heights[reader._next :].tolist())
                assert set(pooled) <= to_read  # nothing kept that no later chunk takes
                pooled_first.append(48 in pooled)
        finally:
            reader.close()
    # a window row spans 3 chunks (16 + 32 + 16 rows), read ahead besides: no pooled
    # arrays on top (before: the dropped ones waited in the pool while the chunks ahead
    # took fresh arrays, and the first chunk's stayed to the end)
    assert max(held) <= 5
    assert not any(pooled_first)


@pytest.mark.parametrize("threads", [1, 2])
def test_reader_bound_parts_are_finished_by_the_taking_thread(tmp_path: Path, threads: int) -> None:
    """One reader that does not yield (a reader-bound run on 2 cores) only reads; the
    outermost tap's plane and the transform run in the thread that takes the chunk (with more
    readers they stay in the readers). The windows and the planes are the same either way."""
    import threading

    from mfaf_cli.pipeline.planes import PlaneStore, PlaneTap

    rng = np.random.default_rng(2)
    opt = rng.integers(1, 3000, (3, 150, 130)).astype("uint16")
    opt[:, 10:20, 30:50] = 0
    t = from_origin(500_000.0, 4_500_000.0, 10.0, 10.0)
    o = write_geotiff(tmp_path / "o.tif", opt, transform=t, nodata=0)
    grid = grid_from_reference(o)
    windows = tile_windows(grid.height, grid.width, 64, 0.25)
    planes_in: set[str] = set()

    def plane_of(arrays: dict) -> np.ndarray:
        planes_in.add(threading.current_thread().name)
        return (arrays["optical"][0] > 1500).astype(np.uint8)

    def scaled(arrays: dict) -> dict:
        return {k: v * np.float32(0.5) for k, v in arrays.items()}

    got = {}
    with AlignedScene({"optical": o}, grid) as scene:
        for yield_ in (True, False):
            planes_in.clear()
            store = PlaneStore()
            reader = StripReader(PlaneTap(scene, plane_of, store), [w.row_off for w in windows],
                                 64, threads=threads, transform=scaled,
                                 yield_to_engine=yield_)  # fmt: skip
            try:
                reads = [reader.read(w) for w in windows]
            finally:
                reader.close()
            valid = np.ones((grid.height, grid.width), bool)
            got[yield_] = (reads, store.take(0, 0, valid, 255))
    (a, pa), (b, pb) = got[True], got[False]
    np.testing.assert_array_equal(pa, pb)
    for (arr_a, va), (arr_b, vb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(va, vb)
        np.testing.assert_array_equal(arr_a["optical"], arr_b["optical"])
    main = threading.current_thread().name  # the reader-bound pass ran last
    assert planes_in == {main} if threads == 1 else main not in planes_in


class _Spy:
    """A scene read through as it is, each read's columns recorded."""

    def __init__(self, scene: AlignedScene) -> None:
        self.scene, self.cols = scene, []

    def read(self, window: Window, out: object = None) -> tuple[dict, np.ndarray]:
        self.cols.append((window.col_off, window.col_off + window.width))
        return self.scene.read(window, out=out)

    def __getattr__(self, name: str) -> object:
        return getattr(self.scene, name)


def test_a_panel_after_an_edge_reads_nothing_left_of_it(tmp_path: Path) -> None:
    """The second of two column panels takes the masks of windows carried over the edge
    from the first panel's reads (exactly the masks of a whole read, holes included) and
    reads no column left of the edge: before, it decoded those columns a second time."""
    from mfaf_cli.pipeline.strips import EdgeMasks

    rng = np.random.default_rng(5)
    opt = rng.integers(1, 3000, (2, 200, 180)).astype("uint16")
    opt[:, 40:90, 50:75] = 0  # nodata left of the edge (75) only, under carried windows
    opt[:, 120:200, 60:110] = 0  # across the edge
    o = write_geotiff(tmp_path / "o.tif", opt, nodata=0)
    grid = grid_from_reference(o)
    edge = 75
    windows = tile_windows(grid.height, grid.width, 64, 0.25)
    left = [w for w in windows if w.col_off < edge]
    right = [w for w in windows if w.col_off + w.width > edge]
    carried = [w for w in right if w.col_off < edge]
    assert carried and all(w in left for w in carried)
    with AlignedScene({"optical": o}, grid) as scene:
        first = EdgeMasks(None, edge)
        a = StripReader(scene, [w.row_off for w in left], 64, threads=0, edge=first,
                        cols=(0, max(w.col_off + w.width for w in left)))  # fmt: skip
        spy = _Spy(scene)
        second = EdgeMasks(edge, None, first._out)
        b = StripReader(spy, [w.row_off for w in right], 64, threads=0, edge=second,
                        cols=(min(w.col_off for w in right), grid.width))  # fmt: skip
        try:
            for reader, ws in ((a, left), (b, right)):
                for w in ws:
                    arrays = {"optical": np.empty((2, 64, 64), np.float32)}
                    valid = np.empty((64, 64), bool)
                    reader.read_into(w, arrays, valid)
                    want, want_valid = scene.read(w)
                    np.testing.assert_array_equal(valid, want_valid)
                    cut = max(0, edge - w.col_off) if reader is b else 0
                    np.testing.assert_array_equal(
                        arrays["optical"][:, :, cut:], want["optical"][:, :, cut:]
                    )
                    assert np.isnan(arrays["optical"][:, :, :cut]).all()
        finally:
            a.close()
            b.close()
    assert spy.cols and min(c0 for c0, _ in spy.cols) == edge
    assert not second._in  # every carried mask taken


def test_take_windows_views_a_run_of_windows() -> None:
    """Fresh windows that are one run of the batch are handed over as views (no copy of
    megabytes a batch); others as a copy; the values are the same either way."""
    from mfaf_cli.pipeline.core import take_windows

    a = {"optical": np.arange(4 * 2 * 3 * 3, dtype=np.float32).reshape(4, 2, 3, 3)}
    run = take_windows(a, [1, 2, 3])["optical"]
    assert np.shares_memory(run, a["optical"]) and run.flags.c_contiguous
    np.testing.assert_array_equal(run, a["optical"][[1, 2, 3]])
    gap = take_windows(a, [0, 2])["optical"]
    assert not np.shares_memory(gap, a["optical"])
    np.testing.assert_array_equal(gap, a["optical"][[0, 2]])


def test_a_lone_reader_bound_reader_reads_further_ahead(tmp_path: Path) -> None:
    """The one reader of a reader-bound run (the run's critical path) reads
    LONE_READER_AHEAD chunks ahead; readers that yield to an engine keep the core's 2."""
    from mfaf_cli.pipeline import core, strips
    from mfaf_cli.tiling.plan import plan_windows

    o = write_geotiff(tmp_path / "o.tif", np.ones((1, 100, 100), "uint16"), nodata=0)
    grid = grid_from_reference(o)
    plan = plan_windows(100, 100, 32, 0.25)
    reads = [plan.read_window(w) for w in plan.windows]
    with AlignedScene({"optical": o}, grid) as scene:
        for yield_, want in ((False, strips.LONE_READER_AHEAD), (True, 2)):
            reader = core.panel_reader(scene, plan, reads, core.EdgeCarry(), threads=1,
                                       ahead=2, yield_to_engine=yield_)  # fmt: skip
            try:
                assert reader._ahead == want
            finally:
                reader.close()
    assert strips.LONE_READER_AHEAD > 2


def test_chunks_spanning_counts_the_chunks_that_reach_the_rows() -> None:
    assert chunks_spanning([0, 100, 200, 300], 100) == 1  # [100, 200) reaches 200
    assert chunks_spanning([0, 100, 200, 300], 101) == 2
    assert chunks_spanning([0, 100, 200, 300], 1000) == 2  # no more chunks than there are
    assert chunks_spanning([0, 10], 512) == 1
    # a run's 256² windows at 25 % overlap: chunks of 192, 64, 128, 64, 128 ... rows
    edges = chunk_edges([*range(0, 1793, 192), 1792], 256, 2048)
    assert edges[:6] == [0, 192, 256, 384, 448, 576]
    assert chunks_spanning(edges, 512) == 6  # after [0, 192): those at 192 ... 640 (to 768)


def test_a_lone_reader_queues_a_block_row_of_its_input(tmp_path: Path) -> None:
    """The lone reader decodes a block row at the chunk that enters it: its queue reaches a
    block row past the chunk taken (more than LONE_READER_AHEAD chunks with tall blocks)."""
    from mfaf_cli.pipeline import core, strips
    from mfaf_cli.tiling.plan import plan_windows

    o = tmp_path / "o.tif"
    profile = {"driver": "GTiff", "width": 256, "height": 256, "count": 1, "dtype": "uint16",
               "crs": "EPSG:32630", "transform": from_origin(500_000.0, 4_500_000.0, 10.0, 10.0),
               "tiled": True, "blockxsize": 128, "blockysize": 128}  # fmt: skip
    with rasterio.open(o, "w", **profile) as dst:
        dst.write(np.ones((1, 256, 256), "uint16"))
    grid = grid_from_reference(o)
    plan = plan_windows(256, 256, 32, 0.25)  # chunks of 8 and 16 rows: 128 rows is ~11
    reads = [plan.read_window(w) for w in plan.windows]
    with AlignedScene({"optical": o}, grid) as scene:
        reader = core.panel_reader(scene, plan, reads, core.EdgeCarry(), threads=1, ahead=2,
                                   yield_to_engine=False)  # fmt: skip
        try:
            want = chunks_spanning(reader.edges, 128)
            assert reader._ahead == want > strips.LONE_READER_AHEAD
        finally:
            reader.close()


def test_a_lone_reader_reads_its_inputs_side_by_side(tmp_path: Path) -> None:
    """A reader-bound run's one reader (the run's critical path) reads the input on the grid
    and the warped one in two threads, each opening only its own file: the windows equal
    the scene's own reads, masks included (the AND of the two reads' masks)."""
    rng = np.random.default_rng(11)
    opt = rng.integers(1, 3000, (3, 150, 130)).astype("uint16")
    opt[:, 10:20, 30:50] = 0
    t = from_origin(500_000.0, 4_500_000.0, 10.0, 10.0)
    o = write_geotiff(tmp_path / "o.tif", opt, transform=t, nodata=0)
    sar = rng.normal(-12, 3, (1, 80, 70)).astype("float32")
    sar[0, 30:40, 20:30] = np.nan  # a hole of the SAR alone
    s = write_geotiff(
        tmp_path / "s.tif", sar, transform=from_origin(500_005.0, 4_500_005.0, 20.0, 20.0)
    )
    grid = grid_from_reference(o)
    windows = tile_windows(grid.height, grid.width, 64, 0.25)
    with AlignedScene({"optical": o, "sar": s}, grid) as scene:
        reader = StripReader(scene, [w.row_off for w in windows], 64, threads=1, ahead=1,
                             yield_to_engine=False)  # fmt: skip
        assert reader._groups == [("optical",), ("sar",)]
        try:
            holes = 0
            for w in windows:
                a, va = reader.read(w)
                b, vb = scene.read(w)
                np.testing.assert_array_equal(va, vb)
                holes += int((~vb).sum())
                for m in b:
                    np.testing.assert_array_equal(a[m], b[m])
            assert holes > 0
            opened = sorted(len(v) for v in scene._by_thread.values())
            assert opened == [1, 1]  # each reader thread: its own input's handle only
        finally:
            reader.close()


def test_the_costlier_modality_group_reads_on_the_main_reader(tmp_path: Path) -> None:
    """The group that costs more per grid pixel (bands x source pixels, warps weighted) comes
    first: it keeps the reader's priority, the cheaper one yields (a 2-band 10 m warped input
    outweighs a 1-band input on the grid; a 1-band 20 m one does not)."""
    from mfaf_cli.pipeline.strips import modality_groups, read_cost

    rng = np.random.default_rng(2)
    t = from_origin(500_000.0, 4_500_000.0, 10.0, 10.0)
    o = write_geotiff(tmp_path / "o.tif", rng.integers(1, 99, (1, 60, 60)).astype("uint16"),
                      transform=t, nodata=0)  # fmt: skip
    heavy = write_geotiff(tmp_path / "h.tif", rng.normal(-9, 1, (2, 60, 60)).astype("float32"),
                          transform=from_origin(500_005.0, 4_500_005.0, 10.0, 10.0))  # fmt: skip
    light = write_geotiff(tmp_path / "l.tif", rng.normal(-9, 1, (1, 30, 30)).astype("float32"),
                          transform=from_origin(500_005.0, 4_500_005.0, 20.0, 20.0))  # fmt: skip
    grid = grid_from_reference(o)
    with AlignedScene({"optical": o, "sar": heavy}, grid) as scene:
        assert read_cost(scene, ["sar"]) > read_cost(scene, ["optical"])
        assert modality_groups(scene) == [("sar",), ("optical",)]
    with AlignedScene({"optical": o, "sar": light}, grid) as scene:
        assert modality_groups(scene) == [("optical",), ("sar",)]
