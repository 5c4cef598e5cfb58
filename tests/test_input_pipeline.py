"""Tests of the training input pipeline (small synthetic images)."""

import functools
import multiprocessing

import jax
import numpy as np
import pytest

from vdsr_jax import image_ops
from vdsr_jax import input_pipeline as ip

PATCH = 7
SCALES = (2, 3, 4)


def _images():
  """RGB, 2-D gray and (H, W, 1) images of odd sizes, random values."""
  rng = np.random.default_rng(42)
  return [
      rng.integers(0, 256, (26, 31, 3), dtype=np.uint8),
      rng.integers(0, 256, (23, 29), dtype=np.uint8),
      rng.integers(0, 256, (30, 22, 1), dtype=np.uint8),
  ]


@pytest.fixture(scope='module')
def images():
  return _images()


@pytest.fixture(scope='module')
def prepared():
  return ip.prepare_images(_images())


def _config(**kwargs):
  defaults = dict(patch_size=PATCH, batch_size=12, scales=SCALES, seed=3)
  defaults.update(kwargs)
  return ip.PipelineConfig(**defaults)


@functools.partial(jax.jit, static_argnums=1)
def _whole_degraded(y, scale):
  return image_ops.imresize(image_ops.imresize(y, 1.0 / scale), scale)


def _reference(plane, spec, patch_size):
  """(input, target) of `spec` cut from the whole degraded image."""
  s = spec.scale
  hr = np.ascontiguousarray(
      image_ops.modcrop(ip.dihedral(plane, spec.transform), s))
  up = np.asarray(_whole_degraded(hr, s))
  assert up.shape == hr.shape
  window = (slice(spec.top, spec.top + patch_size),
            slice(spec.left, spec.left + patch_size))
  return up[window], hr[window]


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _concat(batches):
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_prepare_images(images):
  factors = (1.0, 0.8)
  planes = ip.prepare_images(images + [{'image': images[0]}], factors)
  assert len(planes) == 2 * (len(images) + 1)
  # Y rounded to uint8 first, as the authors' scripts and the evaluation.
  y_u8 = np.asarray(image_ops.rgb2ycbcr(images[0], only_y=True))[..., 0]
  np.testing.assert_array_equal(planes[0], y_u8 / np.float32(255))
  np.testing.assert_array_equal(planes[2], images[1] / np.float32(255))
  np.testing.assert_array_equal(planes[4], images[2][..., 0] / np.float32(255))
  np.testing.assert_array_equal(planes[6], planes[0])  # The mapping form.
  for plane in planes:
    assert plane.dtype == np.float32 and plane.ndim == 2
  small = np.asarray(image_ops.imresize(y_u8 / np.float32(255), 0.8))
  assert planes[1].shape == small.shape == (21, 25)
  np.testing.assert_allclose(planes[1], small, atol=1e-6)


def test_batch_shapes_dtypes_and_range(prepared):
  batch = ip.make_batch(prepared, _config(), step=0)
  assert set(batch) == {'inputs', 'targets', 'scale'}
  for key in ('inputs', 'targets'):
    assert batch[key].shape == (12, PATCH, PATCH, 1)
    assert batch[key].dtype == np.float32
    assert np.all(np.isfinite(batch[key]))
  assert batch['scale'].shape == (12,) and batch['scale'].dtype == np.int32
  assert batch['targets'].min() >= 0 and batch['targets'].max() <= 1
  # Bicubic may overshoot a little, never far.
  assert batch['inputs'].min() > -0.25 and batch['inputs'].max() < 1.25


def test_every_batch_has_every_scale(prepared):
  config = _config()
  for step in range(4):
    scale = ip.make_batch(prepared, config, step)['scale']
    np.testing.assert_array_equal(np.bincount(scale)[list(SCALES)], [4, 4, 4])
  # The paper's batch of 64: 22 / 21 / 21, the same in every batch.
  big = [np.zeros((50, 60), np.float32)]
  for step in range(3):
    specs = ip.draw_specs(big, ip.PipelineConfig(), step)
    counts = np.bincount([spec.scale for spec in specs])
    np.testing.assert_array_equal(counts[[2, 3, 4]], [22, 21, 21])


def test_inputs_equal_whole_image_degradation(prepared):
  config = _config()
  for step in range(2):
    batch = ip.make_batch(prepared, config, step)
    specs = ip.draw_specs(prepared, config, step)
    for row, spec in enumerate(specs):
      assert batch['scale'][row] == spec.scale
      ref_input, ref_target = _reference(prepared[spec.plane], spec, PATCH)
      np.testing.assert_array_equal(batch['targets'][row, ..., 0], ref_target)
      np.testing.assert_allclose(batch['inputs'][row, ..., 0], ref_input,
                                 atol=1e-6, rtol=0)


@pytest.mark.parametrize('shape', [(26, 31), (9, 10)])
def test_border_patches_equal_whole_image_degradation(shape):
  # (9, 10) is smaller than the degraded region at every scale, so the
  # region wraps around MATLAB's mirror boundary several times.
  plane = np.random.default_rng(0).random(shape).astype(np.float32)
  specs = []
  for s in SCALES:
    for transform in (0, 1, 6):
      h, w = ip.dihedral(plane, transform).shape
      bottom, right = h // s * s - PATCH, w // s * s - PATCH
      for top, left in [(0, 0), (0, right), (bottom, 0), (bottom, right),
                        (bottom // 2, 1)]:
        specs.append(ip.PatchSpec(0, transform, s, top, left))
  batch = ip.patches_from_specs([plane], specs, PATCH)
  for row, spec in enumerate(specs):
    ref_input, ref_target = _reference(plane, spec, PATCH)
    np.testing.assert_array_equal(batch['targets'][row, ..., 0], ref_target)
    np.testing.assert_allclose(batch['inputs'][row, ..., 0], ref_input,
                               atol=1e-6, rtol=0)


def _find_crop(patch, planes):
  """All (plane, transform) in which `patch` is a crop."""
  found = []
  for i, plane in enumerate(planes):
    for t in range(8):
      x = ip.dihedral(plane, t)
      if min(x.shape) < patch.shape[0]:
        continue
      windows = np.lib.stride_tricks.sliding_window_view(x, patch.shape)
      if np.any(np.all(windows == patch, axis=(2, 3))):
        found.append((i, t))
  return found


def test_augmentation_covers_dihedral_group(prepared):
  config = _config()
  transforms = set()
  for step in range(6):
    batch = ip.make_batch(prepared, config, step)
    for target in batch['targets'][..., 0]:
      found = _find_crop(target, prepared)
      assert len(found) == 1, found  # A true crop of one transformed image.
      transforms.add(found[0][1])
  assert transforms == set(range(8))


def test_no_augmentation_is_identity(prepared):
  batch = ip.make_batch(prepared, _config(augment=False), 0)
  for target in batch['targets'][..., 0]:
    assert [t for _, t in _find_crop(target, prepared)] == [0]


def test_sampling_weights_area_and_downscale_factors(images):
  config = _config(downscale_factors=(1.0, 0.5))
  planes = ip.prepare_images(images, config.downscale_factors)
  counts = np.zeros(len(planes))
  for step in range(60):
    for spec in ip.draw_specs(planes, config, step):
      counts[spec.plane] += 1
  areas = np.array([p.size for p in planes], np.float64)
  assert np.all(counts > 0)
  np.testing.assert_allclose(counts / counts.sum(), areas / areas.sum(),
                             atol=0.05)


def test_determinism(prepared):
  config = _config()
  _assert_batches_equal(ip.make_batch(prepared, config, 5),
                        ip.make_batch(prepared, config, 5))
  other_step = ip.make_batch(prepared, config, 6)
  other_seed = ip.make_batch(prepared, _config(seed=4), 5)
  base = ip.make_batch(prepared, config, 5)
  assert not np.array_equal(base['targets'], other_step['targets'])
  assert not np.array_equal(base['targets'], other_seed['targets'])


def test_process_split_concatenates_to_global_batch(prepared):
  config = _config()
  full = ip.make_batch(prepared, config, 7)
  for count in (2, 3):
    parts = [ip.make_batch(prepared, config, 7, i, count)
             for i in range(count)]
    assert all(len(part['scale']) == 12 // count for part in parts)
    _assert_batches_equal(_concat(parts), full)


def test_pipeline_matches_make_batch_with_and_without_prefetch(images,
                                                               prepared):
  config = _config()
  expected = [ip.make_batch(prepared, config, step) for step in range(4)]
  for prefetch in (0, 1, 3):
    with ip.PatchPipeline(images, config, prefetch=prefetch) as pipeline:
      assert pipeline.next_step == 0
      for step, batch in zip(range(4), pipeline):
        _assert_batches_equal(batch, expected[step])
        assert pipeline.next_step == step + 1


def test_worker_processes_build_the_same_batches(images, prepared):
  config = _config()
  expected = [ip.make_batch(prepared, config, step) for step in range(3, 9)]
  with ip.PatchPipeline(images, config, start_step=3, prefetch=1,
                        workers=2) as pipeline:
    for step, want in zip(range(3, 9), expected):
      assert pipeline.next_step == step
      _assert_batches_equal(next(pipeline), want)
    children = multiprocessing.active_children()
    assert children  # the batches came from other processes
  assert not set(children) & set(multiprocessing.active_children())
  with pytest.raises(StopIteration):
    next(pipeline)


def test_workers_must_be_a_count(images):
  with pytest.raises(ValueError, match='workers'):
    ip.PatchPipeline(images, _config(), workers=-1)


def test_resume_from_start_step(images):
  config = _config()
  with ip.PatchPipeline(images, config) as pipeline:
    stream = [next(pipeline) for _ in range(5)]
    position = pipeline.next_step
  with ip.PatchPipeline(images, config, start_step=3) as resumed:
    assert resumed.next_step == 3
    for expected in stream[3:]:
      _assert_batches_equal(next(resumed), expected)
  with ip.PatchPipeline(images, config, start_step=position) as resumed:
    _assert_batches_equal(
        next(resumed), ip.make_batch(resumed.prepared, config, position))


def test_pipeline_process_split(images, prepared):
  config = _config()
  parts = []
  for i in range(2):
    with ip.PatchPipeline(images, config, start_step=2, process_index=i,
                          process_count=2) as pipeline:
      parts.append(next(pipeline))
  _assert_batches_equal(_concat(parts), ip.make_batch(prepared, config, 2))


def test_close_stops_thread(images):
  pipeline = ip.PatchPipeline(images, _config(), prefetch=2)
  thread = pipeline._thread  # pylint: disable=protected-access
  next(pipeline)
  pipeline.close()
  assert not thread.is_alive()
  with pytest.raises(StopIteration):
    next(pipeline)
  pipeline.close()  # Idempotent.


@pytest.mark.parametrize('kwargs', [
    dict(patch_size=0),
    dict(batch_size=0),
    dict(scales=()),
    dict(scales=(2, 0)),
    dict(scales=(2, 2.5)),
    dict(scales=(2, 2)),
    dict(batch_size=2, scales=(2, 3, 4)),
    dict(downscale_factors=()),
    dict(downscale_factors=(1.0, 1.5)),
    dict(seed=-1),
])
def test_invalid_config(kwargs):
  with pytest.raises(ValueError):
    _config(**kwargs)


def test_invalid_pipeline_arguments(images, prepared):
  config = _config()
  with pytest.raises(ValueError, match='divisible'):
    ip.make_batch(prepared, config, 0, process_index=0, process_count=5)
  with pytest.raises(ValueError, match='divisible'):
    ip.PatchPipeline(images, config, process_count=5)
  with pytest.raises(ValueError, match='process_index'):
    ip.make_batch(prepared, config, 0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match='empty'):
    ip.PatchPipeline([], config)
  with pytest.raises(ValueError, match='empty'):
    ip.make_batch([], config, 0)
  with pytest.raises(ValueError, match='smaller than'):
    ip.PatchPipeline(images, _config(patch_size=23))  # 23x29 -> 20x28 at x4.
  with pytest.raises(ValueError, match='smaller than'):
    ip.make_batch(prepared, _config(patch_size=31), 0)
  with pytest.raises(ValueError, match='step'):
    ip.make_batch(prepared, config, -1)
  with pytest.raises(TypeError):
    ip.prepare_images([np.zeros((20, 20), np.float32)])


def test_a_variant_too_small_for_a_patch_is_never_drawn():
  """Downscaled below the patch: no weight (no error), as in dense cutting."""
  rng = np.random.default_rng(0)
  big = rng.integers(0, 256, (60, 64), np.uint8)
  tiny = rng.integers(0, 256, (36, 40), np.uint8)  # 0.5x: 18x20 < 17 at x4
  config = _config(patch_size=17, downscale_factors=(1.0, 0.5), batch_size=6)
  prepared = ip.prepare_images([big, tiny], config.downscale_factors)
  assert ip.usable_planes(prepared, config).tolist() == [True, True, True,
                                                         False]
  drawn = {spec.plane for step in range(200)
           for spec in ip.draw_specs(prepared, config, step)}
  assert drawn == {0, 1, 2}
  # All planes usable: the same draws as before this rule (area weights).
  full = _config(patch_size=17, downscale_factors=(1.0,), batch_size=6)
  one = ip.prepare_images([big, tiny], (1.0,))
  areas = np.array([60 * 64, 36 * 40], float)
  for step in range(20):
    for j, spec in enumerate(ip.draw_specs(one, full, step)):
      u = np.random.default_rng([full.seed, step, j]).random(4)
      expected = int(np.searchsorted(np.cumsum(areas), u[0] * areas.sum(),
                                     side='right'))
      assert spec.plane == expected
  # An image with no variant that holds a patch is still an error.
  with pytest.raises(ValueError, match='Training image 1 .*smaller than'):
    ip.make_batch(prepared, _config(patch_size=41,
                                    downscale_factors=(1.0, 0.5)), 0)


def test_luminance_u8_is_exact(images):
  for img in images:
    y8 = ip.luminance_u8(img)
    assert y8.dtype == np.uint8 and y8.shape == img.shape[:2]
    np.testing.assert_array_equal(ip.luminance(y8), ip.luminance(img))
