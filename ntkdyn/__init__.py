"""ntkdyn: gradient starvation and Spectral Decoupling in JAX.

The public API is re-exported here; each module holds one idea (see the module docstrings).
Theory entry points follow the input dtype: enable ``jax_enable_x64`` for float64 where the theory
needs it (the CLI does so for its theory commands).
"""

__version__ = "0.2.0"

# Feature systems and losses
from ntkdyn.systems import (
    FeatureSystem,
    feature_system,
    random_orthonormal,
    random_system,
    rotation_matrix,
    rotation_system,
    stack_systems,
    system_from_matrix,
)
from ntkdyn.losses import (
    binary_accuracy,
    binary_cross_entropy,
    irm_penalty,
    logistic_loss,
    sd_penalty,
    to_signed,
    vrex_penalty,
)
from ntkdyn.objectives import (
    ERM,
    ClassConditionalSD,
    GroupDRO,
    GroupDROState,
    IRMv1,
    Objective,
    SpectralDecoupling,
    VREx,
    switch,
    theory_lam,
)
from ntkdyn.objectives import (
    L2,
    Composite,
    IRMPenalty,
    Logistic,
    LogitPenalty,
    Penalty,
    VRExPenalty,
)
from ntkdyn.errors import InputError
from ntkdyn.runs import RunDir, atomic_write_json, atomic_write_text, check_writable

# Theory: dynamics and fixed points
# (dynamics.py, fixed_points.py)
from ntkdyn.dynamics import (
    RESULTS,
    SolverError,
    Trajectory,
    ce_field,
    dual_field,
    dual_to_z,
    gd,
    integrate,
    quadratic_ce_field,
    sd_field,
    z_to_dual,
)
from ntkdyn.fixed_points import (
    finite_difference_jacobian_s,
    fixed_point,
    fixed_point_and_jacobian_s,
    fixed_point_jacobian_s,
    fixed_points_batch,
    lambert_w_fixed_point,
    sd_square_margin,
    starvation_matrix,
)

# Tangent features, empirical NTK, spectrum, linearized model
# (tangent.py, linearized.py)
from ntkdyn.tangent import (
    DenseStructure,
    FeatureResponseTracker,
    FeatureSpectrum,
    NTKMethod,
    empirical_ntk,
    feature_response_trajectory,
    feature_responses,
    feature_spectrum,
    BlockKrylov,
    Dense,
    responses_from_outputs,
    signed_labels,
    tangent_features,
)
from ntkdyn.linearized import GDTrace, linearize, train_gd
from ntkdyn.analysis import (
    Measurement,
    Prediction,
    SpectrumAnalysis,
    analyse,
    measured_responses,
    predict,
    spectrum_report,
    starvation_table,
)
from ntkdyn.linalg import (
    BlockOperator,
    OnUnconverged,
    SVDNotConvergedError,
    SVDNotConvergedWarning,
    TruncatedSVD,
    truncated_svd,
)
from ntkdyn.tangent.spectrum import signed_tangent_operator
from ntkdyn.analytic import init_ntk_mlp, relu_ntk

# Models
# (models/)
from ntkdyn.models.cnn import CNN, init_cnn
from ntkdyn.models.mlp import (
    MLP,
    DenseApply,
    ModuleApply,
    he_normal,
    init_mlp,
    init_mlp_uniform,
    mlp_apply,
    pure,
    shallow_relu,
    xavier_uniform,
)

# Your own data and network: the dataset and model registries, frozen batch statistics
from ntkdyn.data.dataset import Dataset, stratified_sample
from ntkdyn.data.registry import DATASETS, load_dataset, register_dataset
from ntkdyn.data.npz import load_npz
from ntkdyn.data.images import GroupDataset, ImageSplit
from ntkdyn.data.metadata import load_metadata_folder, write_metadata_fixture
from ntkdyn.models.registry import (
    MODELS,
    Model,
    as_model,
    build_model,
    check_logits,
    load_factory,
    register_model,
)
from ntkdyn.models.frozen import freeze_batch_stats

# Data: MNIST and Colored MNIST
from ntkdyn.data.mnist import MNIST, download_mnist, load_mnist
from ntkdyn.data.colored_mnist import (
    ColoredMNIST,
    Environment,
    colored_mnist,
    grayscale,
    probe_inputs,
)

# Two moons, full-batch multi-seed training, decision-boundary metrics
from ntkdyn.data.moons import make_moons, two_moons
from ntkdyn.train.fullbatch import TrainResult, TrainState, train_fullbatch
from ntkdyn.train.hooks import MetricsCollector, Progress, Record, ResponseRecorder, every
from ntkdyn.train.restarts import TrainedRestarts, train_restarts
from ntkdyn.train.layout import SeedAxis, SeedLayout, cpu_restart_layout, eigen_matmul_options
from ntkdyn.boundary import (
    boundary_distances,
    boundary_metrics,
    line_residual,
    seed_report,
    zero_level_set,
)

# CelebA: data, ResNets, pretrained-weight import, data-parallel training, checkpoints
from ntkdyn.data.celeba import (
    CelebA,
    CelebASplit,
    centre_crop_box,
    decode_split,
    epoch_order,
    iterate_batches,
    load_celeba,
    load_image,
)
from ntkdyn.data.celeba_fixture import write_celeba_fixture
from ntkdyn.models.resnet import ResNet, init_resnet, resnet10, resnet18, resnet50, resnet_logit_fn
from ntkdyn.models.pretrained import (
    load_pretrained_resnet,
    read_safetensors,
    read_state_dict,
    read_torch_state_dict,
    write_safetensors,
)
from ntkdyn.train.dataparallel import (
    MinibatchState,
    data_mesh,
    init_train_state,
    initialize_multihost,
    make_eval_step,
    make_train_step,
    predict_logits,
    replicate,
    shard_batch,
)
from ntkdyn.train.checkpoint import latest_checkpoint, restore_checkpoint, save_checkpoint
from ntkdyn.train.epochs import progress_hook, train_epochs
from ntkdyn.train.checkpoint import CheckpointHook
from ntkdyn.train.groups import Selection, group_balanced_order, group_metrics, select_epoch

__all__ = sorted(
    name
    for name, obj in dict(globals()).items()
    if not name.startswith("_")
    and not getattr(obj, "__file__", None)
    and name not in {"annotations"}
)
