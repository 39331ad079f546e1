"""Outlines of 4-connected pixel components as polygons, traced along pixel edges with array operations.

The polygon of a component is the union of its closed pixel squares: its rings run along the *cracks* between a
component pixel and a pixel outside it (crack following, as in A. Rosenfeld and A. C. Kak, *Digital Picture
Processing*, 2nd ed., 1982). Here every crack of every component in a chunk is found at once, linked to the crack
that follows it, and the resulting cycles are read off in one graph traversal, so the cost grows with the number of
change pixels and cracks, not with the chunk's area, and no Python code runs per polygon or per vertex.

The output is the polygon GDAL's polygoniser (:func:`rasterio.features.shapes` with ``connectivity=4``) gives for
the same component, vertex for vertex once normalised (``tests/vectorization/test_outline.py``): rings without
collinear vertices; where two pixels of one component touch only at a corner, the rings are kept apart at that
point (two holes, or a hole and the shell, touching at one vertex: valid OGC geometry, no self-touching ring).
"""

from __future__ import annotations

import numpy as np
import shapely

# crack directions in image space (x = column to the right, y = row downwards); +1 mod 4 is a right turn on the map
_EAST, _SOUTH, _WEST, _NORTH = 0, 1, 2, 3


def trace_outlines(change: np.ndarray, flat: np.ndarray, owner: np.ndarray, r0: int = 0, c0: int = 0):
    """Polygons of the 4-connected components that ``owner`` numbers.

    Args:
        change: Boolean chunk (h, w): True where a pixel belongs to some component (traced or not).
        flat: Row-major indices into ``change`` of the pixels to trace, ascending.
        owner: Component number of each of those pixels (>= 1; one number per 4-connected component).
        r0, c0: Pixel offset of the chunk in the whole raster.

    Returns:
        ``(polygons, numbers)``: one shapely Polygon per component, in ascending component number, with vertices in
        global pixel space ``(col, -row)`` (exact integers; shell and hole orientation not fixed, normalise them).
    """
    h, w = change.shape
    if not len(flat):
        return np.zeros(0, dtype=object), np.zeros(0, np.int64)
    # pixel indices in a copy padded by one empty pixel all round: every neighbour lookup is in bounds
    cp = np.pad(change, 1).ravel()
    idx = np.int32 if (h + 2) * (w + 2) < 2**31 else np.int64  # vertex and pixel ids
    rows, cols = np.divmod(flat.astype(idx), idx(w))
    w1, w2 = w + 1, w + 2
    fp = (rows + 1) * idx(w2) + (cols + 1)
    v = rows * idx(w1) + cols  # vertex id (y * (w + 1) + x) of each pixel's top-left corner
    del rows, cols
    # the cracks with the component on the left on the map: a counter-clockwise shell, clockwise holes
    starts, ends, dirs, owners = [], [], [], []
    for step, d, s_off, e_off in ((-w2, _WEST, 1, 0),  # top side: (x + 1, y) -> (x, y)
                                  (w2, _EAST, w1, w1 + 1),  # bottom side: (x, y + 1) -> (x + 1, y + 1)
                                  (-1, _SOUTH, 0, w1),  # left side: (x, y) -> (x, y + 1)
                                  (1, _NORTH, w1 + 1, 1)):  # right side: (x + 1, y + 1) -> (x + 1, y)
        i = np.flatnonzero(~cp[fp + step])
        vi = v[i]
        starts.append(vi + s_off)
        ends.append(vi + e_off)
        dirs.append(np.full(len(i), d, np.int8))
        owners.append(owner[i])
    del cp, fp, v
    sv, ev, d, ow = (np.concatenate(a) for a in (starts, ends, dirs, owners))
    del starts, ends, dirs, owners
    # each list is sorted by start vertex already: a stable sort merges four runs
    o = np.argsort(sv, kind="stable")
    sv, ev, d, ow = sv[o], ev[o], d[o], ow[o]
    n = len(sv)
    # the crack that follows one ending at vertex t starts at t; at most two cracks start at a vertex
    nxt = np.searchsorted(sv, ev)
    last = n - 1
    alt = np.minimum(nxt + 1, last)
    two = np.flatnonzero((nxt < last) & (sv[alt] == ev))
    if len(two):
        a, b = nxt[two], nxt[two] + 1
        same_a, same_b = ow[a] == ow[two], ow[b] == ow[two]
        # another component touching at a corner: stay on this one's; this one's own pinch: turn right, which keeps
        # the rings apart at that point (as GDAL does)
        right = d[b] == (d[two] + 1) % 4
        nxt[two] = np.where(same_a & same_b, np.where(right, b, a), np.where(same_b, b, a))
    del alt, two
    # every crack has one successor and one predecessor: the cracks form cycles (the rings). Each cycle is cut before
    # one of its cracks (its head) and linked to the next cycle's head, so that one depth-first walk along that single
    # path lists every ring whole, in the order it runs (a walk from one root linked to every ring would rescan the
    # root's children after each ring: quadratic in the number of rings).
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components, depth_first_order

    def graph(succ):
        return csr_matrix((np.ones(n, np.int8), succ, np.arange(n + 1)), shape=(n, n))

    n_rings, cycle = connected_components(graph(nxt), directed=True, connection="weak")
    heads = np.empty(n_rings, np.int64)
    heads[cycle] = np.arange(n)  # one crack of each cycle (any one will do)
    pred = np.empty(n, np.int64)
    pred[nxt] = np.arange(n)
    path = nxt
    path[pred[heads]] = np.roll(heads, -1)  # the crack before each head leads to the next cycle's head
    del pred, nxt
    order = depth_first_order(graph(path), int(heads[0]), directed=True, return_predecessors=False)
    del path, heads
    length = np.bincount(cycle, minlength=n_rings)
    del cycle
    head = np.cumsum(length) - length  # where each ring starts in `order`
    ring = np.repeat(np.arange(n_rings), length)
    d_run = d[order]
    before = np.empty(n, np.int8)  # direction of the crack before, in the ring (cyclically)
    before[1:] = d_run[:-1]
    before[head] = d_run[np.append(head[1:], n) - 1]
    corner = d_run != before  # a vertex where the direction changes; straight-through vertices are dropped
    sv_run = sv[order]
    vert, vring = sv_run[corner], ring[corner]
    # rings by component, the shell first: it holds the component's smallest vertex id (the top-left corner of its
    # first pixel in raster order, which no hole reaches)
    ring_owner = ow[order[head]]
    ring_min = np.minimum.reduceat(sv_run, head)
    del order, d_run, before, corner, sv_run, ring
    by = np.lexsort((ring_min, ring_owner))
    rank = np.empty(len(by), np.int64)
    rank[by] = np.arange(len(by))
    shell = np.ones(len(by), bool)
    shell[1:] = ring_owner[by][1:] != ring_owner[by][:-1]
    vr = rank[vring]
    vo = np.argsort(vr, kind="stable")
    y, x = np.divmod(vert[vo], w1)
    xy = np.empty((len(vo), 2), np.float64)
    xy[:, 0] = c0 + x
    xy[:, 1] = -(r0 + y)
    rings = shapely.linearrings(xy, indices=vr[vo])
    polygons = shapely.polygons(rings, indices=np.cumsum(shell) - 1)
    return polygons, ring_owner[by][shell].astype(np.int64)


def label_runs(flat: np.ndarray, width: int) -> tuple[np.ndarray, int]:
    """4-connected component numbers of the pixels ``flat`` (row-major indices in a raster ``width`` wide, ascending).

    The pixels are grouped into horizontal runs; a run joins the runs of the row above that share a column with it
    (4-adjacency), and the connected components of that run graph are the pixel components. Numbers are 1..n in
    raster order of each component's first pixel, as :func:`scipy.ndimage.label` numbers them, but the cost follows
    the number of runs, not the raster's area.

    Returns:
        ``(numbers, n)``: int32 number of each pixel, and the number of components.
    """
    if not len(flat):
        return np.zeros(0, np.int32), 0
    flat = flat.astype(np.int64)
    new = np.ones(len(flat), bool)
    new[1:] = (np.diff(flat) != 1) | (flat[1:] % width == 0)  # a gap, or a new row
    start = np.flatnonzero(new)
    end = np.append(start[1:], len(flat)) - 1
    run_start, run_end = flat[start], flat[end]  # first and last pixel of each run
    del new
    # runs of the row above overlapping [b0, b1]: those ending at or after (row - 1, b0) and starting at or before
    # (row - 1, b1); both lists are sorted, so they are a contiguous range
    lo = np.searchsorted(run_end, run_start - width, side="left")
    hi = np.searchsorted(run_start, run_end - width, side="right")
    count = np.maximum(hi - lo, 0)
    below = np.repeat(np.arange(len(start)), count)
    above = np.repeat(lo - np.cumsum(count) + count, count) + np.arange(int(count.sum()))
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m = len(start)
    n, comp = connected_components(coo_matrix((np.ones(len(below), np.int8), (below, above)), shape=(m, m)),
                                   directed=False)
    # connected_components numbers components as it first meets them in node order, which is raster order here
    return np.repeat(comp.astype(np.int32) + 1, end - start + 1), int(n)


RUNS_PER_PIXEL_MAX = 1 / 64
"""Above this many runs per pixel of the chunk, :func:`scipy.ndimage.label` is the cheaper way to label.

Measured on 2048² chunks of smoothed noise (one core): run labelling costs about 200-400 ns per run, scipy's about
4-15 ns per pixel of the chunk whatever it holds; they break even near 25 runs per 1000 pixels."""


def label_components(change: np.ndarray, flat: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected component number (1..n, raster order of first pixels) of each change pixel ``flat``.

    Sparse change is labelled run by run (:func:`label_runs`), fragmented change with :func:`scipy.ndimage.label`;
    both give the same numbers.
    """
    h, w = change.shape
    limit = RUNS_PER_PIXEL_MAX * change.size
    # runs <= pixels; else count the gaps between pixels (the row breaks add at most h runs more)
    if len(flat) <= limit or 1 + np.count_nonzero(np.diff(flat) != 1) <= limit:
        return label_runs(flat, w)
    from scipy import ndimage

    labels, n = ndimage.label(change)  # default structure: 4-connectivity
    return labels.ravel()[flat], int(n)
