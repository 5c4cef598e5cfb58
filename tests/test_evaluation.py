"""The paper's evaluation protocol reproduces Table 3 (bicubic and authors')."""

import csv
import json
import pathlib

import numpy as np
import pytest

from vdsr_jax import datasets
from vdsr_jax import evaluation
from vdsr_jax import image_ops
from vdsr_jax import inference
from vdsr_jax import weights

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds_eval'))


@pytest.fixture(scope='module')
def paper(reference_dir):
  return evaluation.load_paper_table(reference_dir / 'paper_table3.csv')


@pytest.fixture(scope='module')
def official(reference_dir):
  return weights.load_params(reference_dir / 'VDSR_Official.mat')


@pytest.fixture(scope='module')
def golden(reference_dir):
  """golden_per_image.csv: {(dataset, image, scale): row}, an independent
  implementation's per-image scores (bicubic and the authors' weights)."""
  path = reference_dir / 'golden_per_image.csv'
  with open(path) as f:
    rows = csv.DictReader(line for line in f if not line.startswith('#'))
    return {(r['dataset'], r['image'], int(r['scale'])): r for r in rows}


def assert_images_match_golden(per_image, name, golden, method):
  """Every image of `name` that the reference lists agrees with it."""
  checked = 0
  for scale, cell in per_image[name].items():
    for image, got in cell.items():
      ref = golden.get((name, image, int(scale)))
      if ref is None:
        continue
      checked += 1
      # The reference is rounded to 4 decimals (PSNR) and 5 (SSIM).
      assert abs(got['psnr'] - float(ref[f'{method}_psnr'])) <= 2e-3, (
          image, scale, got)
      assert abs(got['ssim'] - float(ref[f'{method}_ssim'])) <= 2e-5, (
          image, scale, got)
  assert checked >= 3 * 5, f'only {checked} images of {name} in the reference'


@pytest.mark.parametrize('name', ['set5', 'set14'])
def test_bicubic_rows_match_paper(name, datasets_dir, tfds_dir, paper, golden):
  per_image = evaluation.evaluate_per_image(
      'bicubic', datasets=[name], data_dir=str(datasets_dir),
      tfds_dir=tfds_dir, progress=False)
  assert_images_match_golden(per_image, name, golden, 'bicubic')
  results = evaluation.mean_scores(per_image)
  for scale in (2, 3, 4):
    got = results[name][str(scale)]
    ref = paper[(name, scale)]
    assert abs(got['psnr'] - ref['bicubic_psnr']) <= 0.015, (scale, got)
    assert abs(got['ssim'] - ref['bicubic_ssim']) <= 0.002, (scale, got)


def test_authors_weights_match_paper_on_set5(datasets_dir, tfds_dir, paper,
                                             official, golden):
  per_image = evaluation.evaluate_per_image(
      'vdsr', official, datasets=['set5'], data_dir=str(datasets_dir),
      tfds_dir=tfds_dir, progress=False)
  assert_images_match_golden(per_image, 'set5', golden, 'official_vdsr')
  results = evaluation.mean_scores(per_image)
  for scale in (2, 3, 4):
    got = results['set5'][str(scale)]
    ref = paper[('set5', scale)]
    assert abs(got['psnr'] - ref['vdsr_psnr']) <= 0.05, (scale, got)
    assert abs(got['ssim'] - ref['vdsr_ssim']) <= 0.002, (scale, got)


def test_bucket_padding_changes_no_output_pixel(datasets_dir, tfds_dir,
                                                official):
  examples = datasets.load('set5', data_dir=str(datasets_dir),
                           tfds_dir=tfds_dir)
  by_name = {examples[i]['name']: examples[i]['image']
             for i in range(len(examples))}
  for name, scale in [('woman', 3), ('head', 4)]:
    hr_y = evaluation.luminance_uint8(image_ops.modcrop(by_name[name], scale))
    plain = evaluation.super_resolve_y(hr_y, scale, 'vdsr', official,
                                       bucket=None)
    bucketed = evaluation.super_resolve_y(hr_y, scale, 'vdsr', official,
                                          bucket=64)
    assert hr_y.shape[0] % 64 and hr_y.shape[1] % 64  # really padded
    np.testing.assert_array_equal(plain, bucketed)


def test_one_compilation_per_bucket():
  import jax  # pylint: disable=g-import-not-at-top
  from vdsr_jax import models  # pylint: disable=g-import-not-at-top
  params = models.init_params(jax.random.PRNGKey(0),
                              models.VDSR(depth=3, features=4), 9)
  # pylint: disable=protected-access
  # A fresh jitted network, whatever earlier tests compiled for this
  # architecture.
  inference._compiled_forward.cache_clear()
  forward = inference._compiled_forward(3, 4, True, 'float32')
  before = forward._cache_size()
  assert before == 0
  rng = np.random.default_rng(0)
  # Five sizes, all padded into the same 32x32 bucket.
  images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for h, w in [(24, 30), (30, 24), (31, 32), (27, 29), (26, 32)]]
  evaluation.evaluate('vdsr', params, datasets=['custom'], scales=(2,),
                      images={'custom': images}, progress=False)
  assert forward._cache_size() - before == 1
  # An image that fills the bucket runs the unmasked program: one more.
  evaluation.evaluate('vdsr', params, datasets=['custom'], scales=(2,),
                      images={'custom': [rng.integers(0, 256, (32, 32, 3),
                                                      dtype=np.uint8)]},
                      progress=False)
  assert forward._cache_size() - before == 2


def test_per_image_scores_average_to_the_cells(tiny_params):
  params = tiny_params()
  rng = np.random.default_rng(1)
  images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for h, w in [(24, 30), (33, 28), (30, 30)]]
  kwargs = dict(datasets=['custom'], scales=(2, 3),
                images={'custom': images}, progress=False)
  per_image = evaluation.evaluate_per_image('vdsr', params, **kwargs)
  cells = evaluation.evaluate('vdsr', params, **kwargs)
  assert list(per_image['custom']) == ['2', '3']
  for s in ('2', '3'):
    scores = per_image['custom'][s]
    assert list(scores) == ['0', '1', '2']
    # Each image's score is that image scored alone.
    p, q = evaluation.score_image(images[1], int(s), 'vdsr', params)
    assert scores['1'] == {'psnr': p, 'ssim': q}
    assert len({r['psnr'] for r in scores.values()}) == 3
    assert cells['custom'][s]['psnr'] == pytest.approx(
        np.mean([r['psnr'] for r in scores.values()]), abs=1e-12)
    assert cells['custom'][s]['ssim'] == pytest.approx(
        np.mean([r['ssim'] for r in scores.values()]), abs=1e-12)
  assert evaluation.mean_scores(per_image) == cells
  with pytest.raises(ValueError, match='no images'):
    evaluation.evaluate('bicubic', datasets=['empty'], images={'empty': []})


def test_gray_image_is_its_own_luminance():
  img = np.arange(36, dtype=np.uint8).reshape(6, 6)
  np.testing.assert_array_equal(evaluation.luminance_uint8(img), img)
  np.testing.assert_array_equal(evaluation.luminance_uint8(img[..., None]),
                                img)


def test_evaluate_argument_errors():
  with pytest.raises(ValueError, match='Unknown method'):
    evaluation.evaluate('lanczos')
  with pytest.raises(ValueError, match='needs params'):
    evaluation.evaluate('vdsr', None)
  with pytest.raises(ValueError, match='integers >= 2'):
    evaluation.evaluate('bicubic', scales=(1.5,), images={'x': []},
                        datasets=['x'])


def test_missing_dataset_folder_is_a_clear_error(tmp_path):
  with pytest.raises(datasets.DatasetError, match=str(tmp_path)):
    evaluation.evaluate('bicubic', datasets=['set5'], data_dir=str(tmp_path),
                        tfds_dir=str(tmp_path / 'tfds'), progress=False)


def test_cli_writes_table_and_json(datasets_dir, tfds_dir, tmp_path, paper,
                                   run_script):
  out = tmp_path / 'results.json'
  proc = run_script('evaluate.py', [
      '--method=bicubic', '--datasets=set5', '--scales=2,4',
      f'--data_dir={datasets_dir}', f'--tfds_dir={tfds_dir}',
      f'--json_out={out}', f'--per_image_json={tmp_path / "images.json"}'],
      timeout=600)
  assert proc.returncode == 0, proc.stderr
  results = json.loads(out.read_text())
  assert set(results) == {'set5'} and set(results['set5']) == {'2', '4'}
  assert set(results['set5']['2']) == {'psnr', 'ssim'}
  per_image = json.loads((tmp_path / 'images.json').read_text())
  assert list(per_image['set5']['4']) == ['baby', 'bird', 'butterfly', 'head',
                                          'woman']
  assert np.mean([r['psnr'] for r in per_image['set5']['4'].values()]
                 ) == pytest.approx(results['set5']['4']['psnr'], abs=1e-12)
  assert abs(results['set5']['4']['psnr'] - paper[('set5', 4)]['bicubic_psnr']
             ) <= 0.015
  assert 'set5' in proc.stdout and 'x4' in proc.stdout and 'dPSNR' in proc.stdout


def test_cli_bad_weights_one_line_error(tmp_path, run_script):
  proc = run_script('evaluate.py', [
      '--method=vdsr', f'--weights={tmp_path}/nope.mat', '--datasets=set5',
      '--scales=2'])
  assert proc.returncode != 0
  assert 'No such weights file' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_cli_missing_output_folder_fails_before_scoring(tmp_path, run_script):
  proc = run_script('evaluate.py', [
      '--method=bicubic', '--datasets=set5', '--scales=2',
      f'--per_image_json={tmp_path}/no_such_dir/images.json'])
  assert proc.returncode == 2
  assert 'no_such_dir does not exist' in proc.stderr
  assert 'Traceback' not in proc.stderr and 'bicubic set5' not in proc.stderr
  assert not (tmp_path / 'no_such_dir').exists()


def test_compare_eval_flags_a_moved_cell(tmp_path, capsys):
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = REPO_ROOT / 'benchmarks' / 'compare_eval.py'
  spec = importlib.util.spec_from_file_location('compare_eval', path)
  compare_eval = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(compare_eval)
  before = {'set5': {'2': {'psnr': 37.5, 'ssim': 0.95},
                     '3': {'psnr': 33.6, 'ssim': 0.92}}}
  after = {'set5': {'2': {'psnr': 37.505, 'ssim': 0.95},
                    '3': {'psnr': 33.62, 'ssim': 0.921}}}
  for name, data in (('b.json', before), ('a.json', after)):
    (tmp_path / name).write_text(json.dumps(data))
  args = [str(tmp_path / 'b.json'), str(tmp_path / 'a.json')]
  assert compare_eval.main(args) == 1  # x3 moved by 0.02 dB
  assert 'largest |dPSNR| 0.02000' in capsys.readouterr().out
  assert compare_eval.main(args + ['--max_db=0.03']) == 0
  (tmp_path / 'other.json').write_text(json.dumps({'set14': before['set5']}))
  assert compare_eval.main([args[0], str(tmp_path / 'other.json')]) == 1
