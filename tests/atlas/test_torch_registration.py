"""The torch backend's building blocks against independent implementations (MONAI, SciPy)."""

import numpy as np
import pytest
from scipy import ndimage

torch = pytest.importorskip("torch")

from liverfat.atlas import torch_registration as tr  # noqa: E402
from liverfat.atlas.registration import TORCH_DEFAULTS  # noqa: E402


def smooth_random(shape, seed, sigma=2.0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), sigma).astype(np.float32)


def test_box_sum_equals_scipy_uniform_filter_with_anisotropic_kernel():
    volume = np.random.default_rng(0).normal(size=(9, 14, 17)).astype(np.float32)
    kernel = (3, 7, 5)
    expected = ndimage.uniform_filter(volume.astype(np.float64), kernel, mode="constant")
    got = tr.box_sum(torch.as_tensor(volume)[None, None], kernel)[0, 0].numpy()
    np.testing.assert_allclose(got, expected * np.prod(kernel), rtol=1e-4, atol=1e-4)


def test_local_ncc_value_and_gradient_equal_monai():
    from monai.losses import LocalNormalizedCrossCorrelationLoss

    target = torch.as_tensor(smooth_random((12, 20, 18), 1))[None, None]
    pred = torch.as_tensor(smooth_random((12, 20, 18), 2) + 0.5 * target.numpy()[0, 0])
    pred = pred[None, None].clone().requires_grad_(True)
    reference = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=7)(pred, target)
    (expected_grad,) = torch.autograd.grad(reference, pred)
    ours = tr.LocalNCC(target, 7)(pred)
    (grad,) = torch.autograd.grad(ours, pred)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-4)
    np.testing.assert_allclose(grad.numpy(), expected_grad.numpy(), rtol=1e-3, atol=1e-8)


def test_velocity_exponential_equals_monai_dvf2ddf():
    from monai.networks.blocks import DVF2DDF

    control = (6, 9, 8)
    velocity = torch.as_tensor(np.stack([smooth_random(control, s, 1.5) for s in (3, 4, 5)]))
    velocity = 3.0 * velocity[None]  # control cells, z y x channels
    cells = torch.tensor([2.5, 4.0, 3.0]).view(1, 3, 1, 1, 1)  # cells per normalised unit (zyx)
    ours = tr._exponential(velocity, tr.ControlGrid(control, cells), steps=6)  # normalised xyz
    monai_cells = DVF2DDF(num_steps=6, mode="bilinear")(velocity)  # control cells, zyx
    expected = (monai_cells / cells).flip(1)
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def identity_points(shape):
    axes = [np.linspace(-1, 1, n) for n in shape]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    return np.stack([xx, yy, zz], -1)


def test_folding_fraction_counts_where_the_map_reverses():
    shape = (6, 8, 240)
    points = identity_points(shape)
    assert tr.folding_fraction(points) == 0.0
    mirrored = points.copy()
    mirrored[..., 0] *= -1
    assert tr.folding_fraction(mirrored) == 1.0
    assert tr.folding_fraction(mirrored, ((1, 4), (2, 5), (10, 30))) == 1.0  # affine outside
    # x -> x + a sin(k x) with a k = 2: d/dx = 1 + 2 cos(k x) <= 0 on a third of every period
    k = 2 * np.pi * 12 / 2.0  # 12 periods over [-1, 1]
    folded = points.copy()
    folded[..., 0] += (2.0 / k) * np.sin(k * points[..., 0])
    assert tr.folding_fraction(folded) == pytest.approx(1 / 3, abs=0.03)


def test_level_geometry_leaves_thick_slices_unpooled():
    # CHAOS at the benchmark's working grid: z 7.7 mm, in-plane 2.5 mm
    pool, kernel = tr.level_geometry(4, (7.7, 2.5, 2.5), 7)
    assert pool == (1, 4, 4)
    assert kernel == (9, 7, 7)  # ~70 mm along every axis
    assert tr.level_geometry(2, (2.0, 2.0, 2.0), 7) == ((2, 2, 2), (7, 7, 7))


def test_bounding_box_with_margin_is_clipped_to_the_volume():
    mask = np.zeros((10, 12, 14), bool)
    mask[2:5, 3:9, 10:13] = True
    assert tr.bounding_box(mask, (1, 2, 3)) == ((1, 6), (1, 11), (7, 14))
    assert tr.bounding_box(np.zeros((3, 4, 5), bool)) == ((0, 3), (0, 4), (0, 5))


def test_deformation_stays_inside_the_roi_box_and_does_not_fold():
    shape = (20, 32, 32)
    fixed = smooth_random(shape, 7, 2.5)[None]
    moving = np.roll(fixed, 2, axis=3)
    roi = np.zeros(shape, np.float32)
    roi[8:12, 12:20, 12:20] = 1
    options = {
        **TORCH_DEFAULTS,
        "affine_levels": [2],
        "affine_iterations": 20,
        "deformable_levels": [2, 1],
        "lncc_kernel": 5,
        "roi_margin_mm": 3.0,
    }
    points, theta, box = tr.optimise(fixed, moving, options, "cpu", (1.0, 1.0, 1.0), roi)
    affine = (
        torch.nn.functional.affine_grid(
            torch.as_tensor(theta)[None], (1, 1, *shape), align_corners=True
        )[0]
        .numpy()
        .astype(points.dtype)
    )
    moved = np.abs(points - affine).max(axis=-1) > 1e-6
    assert moved.any()
    z, y, x = np.nonzero(moved)
    # the ROI box under the affine (near identity here) grown by 3 voxels
    assert z.min() >= 4 and z.max() <= 15 and y.min() >= 8 and y.max() <= 23
    assert tr.folding_fraction(points) < 1e-3
    assert tr.folding_fraction(points, box) == tr.folding_fraction(points)


def test_optimise_leaves_the_global_random_state_alone():
    shape = (12, 16, 16)
    fixed = smooth_random(shape, 2)[None]
    options = {
        **TORCH_DEFAULTS,
        "affine_levels": [2],
        "affine_iterations": 2,
        "deformable_levels": [2],
        "deformable_iterations": 2,
        "lncc_kernel": 3,
    }
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tr.optimise(fixed, np.roll(fixed, 1, axis=3), options, "cpu")
    assert torch.equal(torch.rand(3), expected)  # a caller's seeded stream goes on unchanged


def test_sample_points_to_field_gives_physical_displacements():
    import SimpleITK as sitk

    grid = sitk.Image(7, 5, 4, sitk.sitkFloat32)  # x, y, z sizes
    grid.SetSpacing((2.0, 3.0, 5.0))
    grid.SetOrigin((10.0, -4.0, 7.0))
    angle = 0.3
    grid.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1))
    rng = np.random.default_rng(3)
    points = identity_points((4, 5, 7)) + rng.normal(scale=0.2, size=(4, 5, 7, 3))
    field = sitk.GetArrayFromImage(tr.sample_points_to_field(points, grid))
    for z, y, x in [(0, 0, 0), (3, 4, 6), (2, 1, 5)]:
        moving_index = (points[z, y, x] + 1) / 2 * (np.array([7, 5, 4]) - 1)
        moving = grid.TransformContinuousIndexToPhysicalPoint(moving_index.tolist())
        fixed = grid.TransformIndexToPhysicalPoint((x, y, z))
        np.testing.assert_allclose(field[z, y, x], np.subtract(moving, fixed), atol=1e-4)


def test_pooled_image_is_sampled_where_its_blocks_lie():
    # a ramp equal to the working-grid index along each axis: any pooling of it, sampled at a
    # working-grid point, must give back that point's index (linear interpolation is exact)
    shape = (12, 16, 20)
    for axis in range(3):
        ramp = np.broadcast_to(
            np.arange(shape[axis], dtype=np.float32).reshape(
                [-1 if a == axis else 1 for a in range(3)]
            ),
            shape,
        )
        pooled = tr.Pooled(torch.as_tensor(np.ascontiguousarray(ramp))[None, None], (3, 4, 2))
        box = ((3, 9), (4, 12), (2, 18))  # interior: away from partial blocks at the edges
        points = tr.voxel_centres(box, (1, 1, 1), shape)
        got = pooled.sample(points)[0, 0].numpy()
        expected = np.arange(*box[axis], dtype=float).reshape(
            [-1 if a == axis else 1 for a in range(3)]
        )
        np.testing.assert_allclose(got, np.broadcast_to(expected, got.shape), atol=1e-4)


def test_batched_registration_matches_one_by_one(phantom_manifest):
    """Issue 17 item 6: two templates in one batched call (forced on a CPU) give the warped
    masks one-by-one calls give, within the small change of a shared deformation box."""
    import SimpleITK as sitk

    from liverfat.atlas.images import align_centres, load_subject
    from liverfat.atlas.registration import BackendSettings, register, register_many
    from liverfat.evaluation.segmentation import dice

    ids = phantom_manifest.subject_ids
    fixed = load_subject(phantom_manifest, ids[0], with_liver=True)
    movings = [
        align_centres(fixed, load_subject(phantom_manifest, s, with_liver=True)) for s in ids[1:3]
    ]
    fast = {"affine_levels": [2], "affine_iterations": 15, "deformable_levels": [2]}
    alone = [register("torch", fixed, m, BackendSettings(extra=fast)) for m in movings]
    batched = register_many(
        "torch", fixed, movings, BackendSettings(extra={**fast, "batch_templates": True})
    )
    assert [r.transform["batch"] for r in batched] == [2, 2]
    truth = sitk.GetArrayFromImage(fixed.liver)
    for one, many in zip(alone, batched, strict=True):
        a, b = (sitk.GetArrayFromImage(r.warped_mask) for r in (one, many))
        assert dice(a, b) > 0.95, dice(a, b)
        assert abs(dice(truth, a) - dice(truth, b)) < 0.03
        assert np.allclose(one.transform["affine_theta"], many.transform["affine_theta"], atol=1e-4)
    off = register_many("torch", fixed, movings, BackendSettings(extra=fast))  # CPU: one by one
    assert all("batch" not in r.transform for r in off)
