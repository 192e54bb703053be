"""Tests of the differentiable rasterizer and shader (megafr.face3d.render), with known answers."""

import math

import numpy as np
import pytest
import torch

from megafr.face3d.render import (
    DEFAULT_GEOMETRY_SH,
    SH_CONSTANTS,
    OrthoCamera,
    PerspectiveCamera,
    Renderer,
    icosphere,
    ndc_to_pixels,
    project,
    sh_shading,
)

UNIT_SHADING_SH = 1.0 / SH_CONSTANTS[0]  # sh[0] giving shading exactly 1 everywhere


def _ortho(batch, dtype=torch.float32, scale=1.0):
    return OrthoCamera(torch.full((batch,), scale, dtype=dtype), torch.zeros(batch, 2, dtype=dtype))


def _unit_sh(batch, dtype=torch.float32):
    sh = torch.zeros(batch, 9, 3, dtype=dtype)
    sh[:, 0] = UNIT_SHADING_SH
    return sh


def _screen(points_ndc_xy, depth):
    """[K, 2] NDC points and [K] depths -> screen vertices [1, K, 3] (float64)."""
    xy = torch.as_tensor(points_ndc_xy, dtype=torch.float64)
    return torch.cat([xy, torch.as_tensor(depth, dtype=torch.float64)[:, None]], dim=1)[None]


def _inside_by_solve(tri_pixels: np.ndarray, size: int) -> np.ndarray:
    """Independent coverage test: barycentrics from a 3x3 linear solve at each pixel centre."""
    matrix = np.vstack([tri_pixels.T, np.ones(3)])  # [3, 3]: columns are (x, y, 1) of each vertex
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    rhs = np.stack([xs.ravel(), ys.ravel(), np.ones(size * size)])  # [3, H*W]
    lam = np.linalg.solve(matrix, rhs)
    return (lam >= 0).all(axis=0).reshape(size, size), np.abs(lam).min(axis=0).reshape(size, size)


@pytest.mark.parametrize("clockwise", [False, True])
def test_single_triangle_covers_expected_pixels(clockwise):
    size = 24
    tri = np.array([[-0.71, -0.63], [0.83, -0.22], [-0.12, 0.77]])
    if clockwise:
        tri = tri[::-1].copy()
    renderer = Renderer(torch.tensor([[0, 1, 2]]), size, cull_backfaces=False)
    frags = renderer.rasterize(_screen(tri, [1.0, 1.0, 1.0]))
    tri_pixels = ndc_to_pixels(torch.from_numpy(tri)[None], size)[0].numpy()
    expected, margin = _inside_by_solve(tri_pixels, size)
    # The triangle is chosen so that no pixel centre sits on an edge (the test is then unambiguous).
    assert margin[expected].min() > 1e-3 or not expected.any()
    covered = frags.face_idx[0].numpy() >= 0
    assert expected.sum() > 100
    assert np.array_equal(covered, expected)
    assert torch.equal(frags.mask[0, 0] > 0, torch.from_numpy(expected))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_cracks_between_triangles_sharing_an_edge(dtype):
    """A grid whose edges (including diagonals) pass exactly through pixel centres is covered without holes."""
    size, step, cells = 32, 3, 10
    centres = 0.5 + step * torch.arange(cells + 1, dtype=torch.float64)  # pixel coordinates of grid lines
    gx, gy = torch.meshgrid(centres, centres, indexing="xy")
    ndc = torch.stack([gx / (size / 2) - 1, 1 - gy / (size / 2)], -1).reshape(-1, 2)  # exact dyadic values

    def vid(i, j):
        return i * (cells + 1) + j

    faces = []
    for i in range(cells):
        for j in range(cells):
            a, b, c, d = vid(i, j), vid(i, j + 1), vid(i + 1, j), vid(i + 1, j + 1)
            faces += [[a, c, b], [b, c, d]] if (i + j) % 2 else [[a, c, d], [a, d, b]]
    screen = torch.cat([ndc, torch.ones(len(ndc), 1, dtype=torch.float64)], 1)[None].to(dtype)
    mask = Renderer(torch.tensor(faces), size, cull_backfaces=False).rasterize(screen).mask[0, 0]
    last = int(centres[-1])  # pixels 0..last have centres inside the grid (edges inclusive)
    assert torch.all(mask[:last + 1, :last + 1] == 1)
    assert torch.all(mask[last + 1:] == 0) and torch.all(mask[:, last + 1:] == 0)


def test_back_facing_triangle_is_culled():
    ccw = [[-0.5, -0.5], [0.5, -0.5], [0.0, 0.5]]  # counter-clockwise in NDC (y up): front-facing
    renderer = Renderer(torch.tensor([[0, 1, 2]]), 16)
    assert renderer.rasterize(_screen(ccw, [1.0] * 3)).mask.sum() > 0
    assert renderer.rasterize(_screen(ccw[::-1], [1.0] * 3)).mask.sum() == 0


def test_nearer_triangle_wins_regardless_of_order():
    size = 16
    a = [[-0.8, -0.8], [0.6, -0.8], [-0.1, 0.7]]
    b = [[-0.6, -0.7], [0.8, -0.7], [0.1, 0.8]]
    screen = _screen(a + b, [2.0, 2.0, 2.0, 1.0, 1.0, 1.0])  # triangle b (face 1) is nearer
    for faces, near_face in (([[0, 1, 2], [3, 4, 5]], 1), ([[3, 4, 5], [0, 1, 2]], 0)):
        renderer = Renderer(torch.tensor(faces), size)
        frags = renderer.rasterize(screen)
        only_a = Renderer(torch.tensor([faces[1 - near_face]]), size).rasterize(screen).mask[0, 0] > 0
        only_b = Renderer(torch.tensor([faces[near_face]]), size).rasterize(screen).mask[0, 0] > 0
        overlap = only_a & only_b
        assert overlap.sum() > 20
        assert torch.all(frags.face_idx[0][only_b] == near_face)
        assert torch.all(frags.face_idx[0][only_a & ~only_b] == 1 - near_face)
        assert torch.allclose(frags.depth[0][overlap], torch.ones((), dtype=torch.float64))


def test_interpolation_reproduces_linear_colours():
    """Colours that are an affine function of position are reproduced exactly at every covered pixel."""
    size = 20
    vertices = torch.tensor([[[-0.9, -0.8, 0.0], [0.85, -0.6, 0.1], [0.0, 0.9, -0.2]]], dtype=torch.float64)
    weights = torch.tensor([[0.3, 0.1, 0.2], [0.1, -0.2, 0.25], [0.0, 0.0, 0.0]], dtype=torch.float64)
    offset = torch.tensor([0.5, 0.45, 0.4], dtype=torch.float64)
    albedo = vertices @ weights + offset  # [1, 3, 3] in (0, 1)
    renderer = Renderer(torch.tensor([[0, 1, 2]]), size)
    out = renderer(vertices, _ortho(1, torch.float64), albedo=albedo, sh=_unit_sh(1, torch.float64))
    covered = out.mask[0, 0] > 0
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ndc = torch.stack([(xs + 0.5) / size * 2 - 1, 1 - (ys + 0.5) / size * 2], -1).double()  # [H, W, 2]
    expected = ndc @ weights[:2] + offset  # [H, W, 3]
    image = (out.image[0].permute(1, 2, 0) + 1) / 2
    assert covered.sum() > 100
    assert torch.allclose(image[covered], expected[covered], atol=1e-10)
    # Barycentrics sum to one and each vertex's own colour comes back where its weight dominates.
    assert torch.allclose(out.fragments.bary[0][covered].sum(-1), torch.ones((), dtype=torch.float64))
    assert torch.all(out.image[0][:, ~covered] == -1.0)  # default black background


def test_interpolation_is_perspective_correct():
    """A perspective-projected planar triangle interpolates model-space x (an affine attribute) exactly."""
    size = 20
    vertices = torch.tensor([[[-0.5, -0.4, 0.3], [0.5, -0.3, -0.4], [0.0, 0.5, 0.0]]], dtype=torch.float64)
    camera = PerspectiveCamera(torch.tensor([2.0], dtype=torch.float64), torch.eye(3, dtype=torch.float64)[None],
                               torch.tensor([[0.0, 0.0, -2.0]], dtype=torch.float64))
    renderer = Renderer(torch.tensor([[0, 1, 2]]), size)
    frags = renderer.rasterize(project(vertices, camera), perspective=True)
    image = renderer.interpolate(vertices, frags)  # [1, 3, H, W] model-space position per pixel
    covered = frags.mask[0, 0] > 0
    pos = image[0][:, covered].T  # [P, 3]
    ndc = project(pos[None], camera)[0]
    ys, xs = torch.nonzero(covered, as_tuple=True)
    centres = torch.stack([(xs + 0.5) / size * 2 - 1, 1 - (ys + 0.5) / size * 2], -1).double()
    assert torch.allclose(ndc[:, :2], centres, atol=1e-10)  # the interpolated point projects onto the pixel
    assert torch.allclose(frags.depth[0][covered], ndc[:, 2], atol=1e-10)


def _two_triangle_scene(dtype=torch.float64):
    vertices = torch.tensor([[[-0.8, -0.7, 0.1], [0.7, -0.8, 0.0], [0.1, 0.75, 0.2], [0.9, 0.6, -0.1]]], dtype=dtype)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    albedo = torch.tensor([[[0.2, 0.5, 0.7], [0.6, 0.3, 0.4], [0.5, 0.6, 0.2], [0.3, 0.4, 0.5]]], dtype=dtype)
    sh = torch.zeros(1, 9, 3, dtype=dtype)
    sh[0, 0] = 0.7 / SH_CONSTANTS[0]
    sh[0, 3] = 0.2 / SH_CONSTANTS[3]  # some light from the front so that normals matter
    sh[0, 2] = 0.1 / SH_CONSTANTS[2]
    return vertices, faces, albedo, sh


@pytest.mark.parametrize("perspective", [False, True])
def test_gradients_match_finite_differences(perspective):
    vertices, faces, albedo, sh = _two_triangle_scene()
    renderer = Renderer(faces, 10)
    if perspective:
        camera = PerspectiveCamera(torch.tensor([2.5], dtype=torch.float64), torch.eye(3, dtype=torch.float64)[None],
                                   torch.tensor([[0.0, 0.0, -2.5]], dtype=torch.float64))
    else:
        camera = _ortho(1, torch.float64, scale=0.95)
    weights = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss(v, a):
        return (renderer(v, camera, albedo=a, sh=sh).image * weights).sum()

    v, a = vertices.clone().requires_grad_(), albedo.clone().requires_grad_()
    grad_v, grad_a = torch.autograd.grad(loss(v, a), (v, a))
    assert grad_v.abs().sum() > 0 and grad_a.abs().sum() > 0
    assert torch.autograd.gradcheck(loss, (v, a), eps=1e-6, atol=1e-6)


def test_soft_silhouette_values_and_edge_gradients():
    size = 48
    vertices = torch.tensor([[[-0.7, -0.6, 0.0], [0.75, -0.55, 0.0], [0.05, 0.8, 0.0]]], dtype=torch.float64)
    renderer = Renderer(torch.tensor([[0, 1, 2]]), size)
    screen = project(vertices, _ortho(1, torch.float64)).requires_grad_()
    soft = renderer.soft_silhouette(screen, sigma_pixels=1.0)
    hard = renderer.rasterize(screen.detach()).mask
    assert soft.shape == (1, 1, size, size)
    assert torch.all((soft > 0.5) == (hard > 0.5))
    far_outside = torch.nn.functional.max_pool2d(hard, 11, stride=1, padding=5) == 0
    deep_inside = -torch.nn.functional.max_pool2d(-hard, 11, stride=1, padding=5) == 1
    assert far_outside.any() and deep_inside.any()
    assert torch.all(soft[far_outside] < 1e-2) and torch.all(soft[deep_inside] > 0.99)
    grad, = torch.autograd.grad(soft.sum(), screen)
    assert torch.all(grad[0, :, :2].abs().sum(-1) > 1e-3)  # every vertex moves the outline
    # Moving a vertex outward grows the soft area: directional derivative has the right sign.
    outward = screen.detach()[0, :, :2] - screen.detach()[0, :, :2].mean(0)
    assert (grad[0, :, :2] * outward).sum() > 0

    def soft_of(s):
        return (renderer.soft_silhouette(s, 1.5) * hard.new_tensor(np.linspace(0, 1, size))).sum()

    assert torch.autograd.gradcheck(soft_of, (screen,), eps=1e-6, atol=1e-6)


def test_soft_silhouette_of_closed_mesh_follows_outline():
    """On a sphere only the outline is soft: interior triangle edges must not dent the silhouette."""
    v, f = icosphere(3)
    renderer = Renderer(f, 48)
    screen = project(v[None] * 0.7, _ortho(1))
    soft = renderer.soft_silhouette(screen, 1.0)
    hard = renderer.rasterize(screen).mask
    inner = -torch.nn.functional.max_pool2d(-hard, 11, stride=1, padding=5) == 1
    assert torch.all(soft[inner] > 0.98)
    assert abs(float(soft.sum() - hard.sum())) < 0.05 * float(hard.sum())


def test_soft_silhouette_ignores_contours_inside_the_covered_region():
    """A small sphere in front of a big one, its outline ~3 px inside the big outline, leaves no dent."""
    v, f = icosphere(3)
    vertices = torch.cat([v * 0.6, v * 0.2 + torch.tensor([0.3, 0.0, 0.8])])[None]
    faces = torch.cat([f, f + v.shape[0]])
    renderer = Renderer(faces, 64)
    screen = project(vertices, _ortho(1))
    soft = renderer.soft_silhouette(screen, 1.0)
    hard = renderer.rasterize(screen).mask
    two_px_inside = -torch.nn.functional.max_pool2d(-hard, 5, stride=1, padding=2) == 1
    assert torch.all(soft[two_px_inside] > 0.85)  # sigmoid(2) = 0.88 at the closest


def test_front_of_a_closed_mesh_is_visible():
    """An icosphere coloured red in front (z > 0) and blue behind shows red, culled or not."""
    v, f = icosphere(2)
    albedo = torch.where(v[:, 2:] > 0, torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.1, 0.9]))[None]
    for cull in (True, False):
        out = Renderer(f, 32, cull_backfaces=cull)(v[None] * 0.8, _ortho(1), albedo=albedo, sh=_unit_sh(1))
        centre = (out.image[0, :, 12:20, 12:20] + 1) / 2
        assert torch.all(centre[0] > 0.8) and torch.all(centre[2] < 0.2)


def test_sphere_area_and_background_image():
    v, f = icosphere(3)
    size, radius = 64, 0.6
    background = torch.linspace(-1, 1, 3 * size * size).view(1, 3, size, size)
    out = Renderer(f, size)(v[None] * radius, _ortho(1), mode="geometry", background=background)
    expected_area = math.pi * (radius * size / 2) ** 2
    assert abs(float(out.mask.sum()) - expected_area) < 0.03 * expected_area
    uncovered = out.mask[0, 0] == 0
    assert torch.allclose(out.image[0][:, uncovered], background[0][:, uncovered], atol=1e-6)


def test_geometry_mode_light_from_the_front():
    v, f = icosphere(3)
    out = Renderer(f, 64)(v[None] * 0.8, _ortho(1), mode="geometry")
    image = out.image[0, 0]
    assert image[32, 32] > image[32, 8] and image[32, 32] > image[58, 32]  # centre brighter than the rim
    assert torch.allclose(out.image[0, 0], out.image[0, 1]) and torch.allclose(out.image[0, 1], out.image[0, 2])
    # The default light is ambient + diffuse * (n . d): check the SH gives that for a frontal normal.
    shading = sh_shading(torch.tensor([0.0, 0.0, 1.0]), DEFAULT_GEOMETRY_SH)
    assert torch.allclose(shading, torch.full((3,), 0.45 + 0.55 / math.sqrt(1 + 0.35 ** 2)), atol=1e-6)


def test_sh_basis_matches_analytic_lambertian_band_one():
    """DECA's band-0/1 constants: irradiance of a unit-radiance dipole L(w) = w_z is (2 pi / 3) n_z."""
    sh = torch.zeros(9, 1, dtype=torch.float64)
    sh[3] = math.sqrt(4 * math.pi / 3)  # SH coefficient of w_z (Y_10 = sqrt(3 / 4pi) w_z)
    for nz in (1.0, 0.3, -0.5):
        n = torch.tensor([math.sqrt(1 - nz * nz), 0.0, nz], dtype=torch.float64)
        assert torch.allclose(sh_shading(n, sh), torch.tensor([2 * math.pi / 3 * nz], dtype=torch.float64))


def test_orthographic_and_far_perspective_agree():
    v, f = icosphere(3)
    size, distance, focal = 48, 1000.0, 800.0
    albedo = (v[None] + 1) / 2 * 0.8 + 0.1
    sh = DEFAULT_GEOMETRY_SH[None]
    renderer = Renderer(f, size)
    ortho = renderer(v[None] * 0.7, _ortho(1, scale=focal / distance), albedo=albedo, sh=sh)
    persp = renderer(v[None] * 0.7, PerspectiveCamera(torch.tensor([focal]), torch.eye(3)[None],
                                                      torch.tensor([[0.0, 0.0, -distance]])), albedo=albedo, sh=sh)
    differing = (ortho.mask != persp.mask).sum()
    assert differing <= 0.01 * ortho.mask.sum()
    both = (ortho.mask * persp.mask)[0, 0] > 0
    assert (ortho.image[0][:, both] - persp.image[0][:, both]).abs().max() < 0.02


def test_batch_equals_one_by_one():
    v, f = icosphere(3)
    g = torch.Generator().manual_seed(0)
    batch = 3
    vertices = v[None] * 0.7 + 0.05 * torch.randn(batch, *v.shape, generator=g)
    albedo = torch.rand(batch, *v.shape, generator=g)
    sh = DEFAULT_GEOMETRY_SH[None] + 0.1 * torch.randn(batch, 9, 3, generator=g)
    camera = OrthoCamera(torch.tensor([1.0, 0.9, 1.1]), 0.1 * torch.randn(batch, 2, generator=g))
    renderer = Renderer(f, 40)
    together = renderer(vertices, camera, albedo=albedo, sh=sh, soft_sigma=1.0)
    for i in range(batch):
        cam_i = OrthoCamera(camera.scale[i:i + 1], camera.translation[i:i + 1])
        alone = renderer(vertices[i:i + 1], cam_i, albedo=albedo[i:i + 1], sh=sh[i:i + 1], soft_sigma=1.0)
        assert torch.equal(together.image[i], alone.image[0])
        # exp inside the sigmoid takes SIMD or scalar code paths depending on the tensor length,
        # so the soft mask may differ in the last bits (observed: 2e-9); everything else is bit-exact.
        assert torch.allclose(together.soft_mask[i], alone.soft_mask[0], rtol=0, atol=1e-7)
        assert torch.equal(together.fragments.face_idx[i], alone.fragments.face_idx[0])


def test_input_errors_are_clear():
    v, f = icosphere(1)
    renderer = Renderer(f, 16)
    with pytest.raises(ValueError, match="photo mode needs albedo"):
        renderer(v[None], _ortho(1))
    with pytest.raises(ValueError, match="mode should be one of"):
        renderer(v[None], _ortho(1), mode="wireframe")
    with pytest.raises(ValueError, match="OrthoCamera for a batch of 2"):
        project(v[None].expand(2, -1, -1), _ortho(1))
    with pytest.raises(ValueError, match="background should be"):
        renderer(v[None], _ortho(1), mode="geometry", background=torch.zeros(1, 3, 8, 8))
