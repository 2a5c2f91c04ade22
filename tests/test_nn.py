"""pipeline.nn: networks, optimizers, schedules and the jitted chunk step."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pipeline import nn

MODEL = (
    ("activation", "relu"),
    ("batch_norm", False),
    ("dropout", 0.0),
    ("hidden", (16,)),
    ("n_features", 8),
    ("n_outputs", 3),
)
ADAM = (("name", "adam"),)
CONSTANT = (
    ("kind", "constant"),
    ("learning_rate_init", 0.01),
    ("steps_per_epoch", 1),
    ("total_steps", 1),
)


def _model_kwargs(**changes):
    return tuple(sorted({**dict(MODEL), **changes}.items()))


def _chunk(n_batches=3, batch=4, n_real=None, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_batches, batch, 8)).astype(np.float32)
    Y = np.stack([rng.integers(0, 3, (n_batches, batch)), np.ones((n_batches, batch))], -1)
    mask = np.ones((n_batches, batch), bool)
    if n_real is not None:
        mask.reshape(-1)[n_real:] = False
    return X, Y.astype(np.float32), mask


def _start(model_kwargs=MODEL, lr=0.01):
    params, _ = nn.build(nn.MLP, model_kwargs, jax.random.key(0))
    state = nn.initial_state(nn.build(nn.MLP, model_kwargs, jax.random.key(0))[0])
    opt_state = nn.make_optimizer("adam", lr).init(params)
    return params, state, opt_state, jax.random.key(1)


def _copy(tree):
    return jax.tree_util.tree_map(lambda a: np.array(a), tree)


def test_initialisation_fits_the_activation():
    relu = nn.MLP(100, (50,), 10, activation="relu", key=jax.random.key(0))
    tanh = nn.MLP(100, (50,), 10, activation="tanh", key=jax.random.key(0))
    he, glorot = np.sqrt(6 / 100), np.sqrt(6 / 150)
    assert (
        np.abs(relu.layers[0].weight).max() <= he and np.abs(relu.layers[0].weight).max() > glorot
    )
    assert np.abs(tanh.layers[0].weight).max() <= glorot
    assert np.all(relu.layers[0].bias == 0) and np.any(tanh.layers[0].bias != 0)
    with pytest.raises(ValueError, match="activation must be one of"):
        nn.MLP(3, (2,), 1, activation="softsign", key=jax.random.key(0))


def test_batch_norm_statistics_ignore_padding():
    bn = nn.BatchNorm(2, momentum=0.0)
    x = jnp.array([[1.0, 2.0], [3.0, 6.0], [100.0, -100.0]])
    weight = jnp.array([1.0, 1.0, 0.0])
    _, stats = bn(x, nn.NormStats(jnp.zeros(2), jnp.ones(2)), train=True, weight=weight)
    np.testing.assert_allclose(stats.mean, [2.0, 4.0])
    np.testing.assert_allclose(stats.var, [1.0, 4.0])
    _, same = bn(x, stats, train=True, weight=jnp.zeros(3))  # nothing real: unchanged
    np.testing.assert_array_equal(same.mean, stats.mean)


def test_step_is_compiled_once_per_configuration():
    a = nn.compiled_step(nn.MLP, MODEL, "softmax", ADAM, CONSTANT)
    assert nn.compiled_step(nn.MLP, MODEL, "softmax", ADAM, CONSTANT) is a
    assert nn.compiled_step(nn.MLP, _model_kwargs(hidden=(8,)), "softmax", ADAM, CONSTANT) is not a


def test_all_padding_chunk_changes_nothing():
    step = nn.compiled_step(nn.MLP, MODEL, "softmax", ADAM, CONSTANT)
    params, state, opt_state, key = _start()
    start = _copy((params, state, opt_state))
    X, Y, mask = _chunk(n_real=0)
    *out, metrics = step(params, state, opt_state, key, X, Y, mask, (0.0, 0.0))
    for before, after in zip(
        jax.tree_util.tree_leaves(start[:3]), jax.tree_util.tree_leaves(out[:3]), strict=True
    ):
        np.testing.assert_array_equal(before, after)
    assert float(metrics["count"]) == 0 and float(metrics["loss_sum"]) == 0


def test_padding_is_invisible_to_training():
    """A batch padded with junk rows trains exactly like the real rows alone (to float)."""
    step = nn.compiled_step(nn.MLP, MODEL, "softmax", ADAM, CONSTANT)
    X, Y, _ = _chunk(n_batches=1, batch=4)
    padded_X = np.concatenate([X, 50 * np.ones_like(X)], axis=1)
    padded_Y = np.concatenate([Y, Y], axis=1)
    mask = np.arange(8)[None] < 4
    run = lambda *chunk: step(*_start(), *chunk, (1e-3, 1e-3))  # noqa: E731
    real, padded = run(X, Y, np.ones((1, 4), bool)), run(padded_X, padded_Y, mask)
    for a, b in zip(
        jax.tree_util.tree_leaves(real[0]), jax.tree_util.tree_leaves(padded[0]), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(real[4]["loss_sum"], padded[4]["loss_sum"], rtol=1e-5)


@pytest.mark.parametrize("name", nn.OPTIMIZERS)
def test_every_optimizer_lowers_the_loss(name):
    lr = {"adadelta": 10.0, "adagrad": 0.1}.get(name, 0.01)
    opt = (("name", name),)
    step = nn.compiled_step(nn.MLP, MODEL, "softmax", opt, CONSTANT)
    params, state, _, key = _start()
    opt_state = nn.make_optimizer(name, lr).init(params)
    X, Y, mask = _chunk(n_batches=1, batch=32)
    first = last = None
    for _ in range(30):
        params, state, opt_state, key, m = step(
            params, state, opt_state, key, X, Y, mask, (0.0, 0.0)
        )
        first = float(m["loss_sum"]) if first is None else first
        last = float(m["loss_sum"])
    assert last < 0.7 * first, (name, first, last)


def test_learning_rate_lives_in_the_optimizer_state():
    params = {"w": jnp.ones(3)}
    state = nn.make_optimizer("sgd", 0.1, momentum=0.0).init(params)
    assert nn.current_learning_rate(state) == pytest.approx(0.1)
    state = nn.set_learning_rate(state, 0.02)
    assert nn.current_learning_rate(state) == pytest.approx(0.02)


def test_schedules():
    inv = nn.make_schedule(
        "invscaling", 0.1, steps_per_epoch=10, total_steps=100, power_t=0.5, batch_size=3
    )
    assert inv(5) == pytest.approx(0.1 / (15 + 1) ** 0.5)
    step = nn.make_schedule(
        "step", 1.0, steps_per_epoch=10, total_steps=100, decay=0.5, decay_epochs=2
    )
    assert [float(step(s)) for s in (0, 19, 20, 40)] == [1.0, 1.0, 0.5, 0.25]
    cos = nn.make_schedule("cosine", 1.0, steps_per_epoch=10, total_steps=100)
    assert float(cos(0)) == 1.0 and float(cos(100)) == pytest.approx(0.0, abs=1e-7)
    warm = nn.make_schedule("constant", 1.0, steps_per_epoch=10, total_steps=100, warmup_steps=10)
    assert float(warm(0)) == 0.0 and float(warm(5)) == 0.5 and float(warm(50)) == 1.0
    assert nn.make_schedule("adaptive", 0.3, steps_per_epoch=1, total_steps=1) == 0.3
    with pytest.raises(ValueError, match="learning_rate must be one of"):
        nn.make_schedule("linear", 0.1, steps_per_epoch=1, total_steps=1)


def test_penalty_covers_weight_matrices_only():
    model = nn.MLP(2, (2,), 1, activation="identity", key=jax.random.key(0))
    params, _ = eqx.partition(model, eqx.is_array)
    weights = [layer.weight for layer in model.layers]
    l2 = sum(float((w**2).sum()) for w in weights)
    l1 = sum(float(jnp.abs(w).sum()) for w in weights)
    assert float(nn.penalty(params, 2.0, 0.5)) == pytest.approx(l2 + 0.5 * l1, rel=1e-6)


def test_dropout_is_training_only():
    model = nn.MLP(8, (64,), 2, activation="relu", dropout=0.5, key=jax.random.key(0))
    x = jnp.ones((4, 8))
    a, _ = model(x, (), train=False)
    b, _ = model(x, (), train=False)
    c, _ = model(x, (), train=True, key=jax.random.key(3))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert optax  # optax is the optimizer library under all of this


# ------------------------------------------------------------------ the other networks


def _net(factory, **kwargs):
    params, static = nn.build(factory, tuple(sorted(kwargs.items())), jax.random.key(1))
    return eqx.combine(params, static)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_batched_recurrence_equals_equinox_cells_per_sample(cell):
    rnn = _net(
        nn.RNN,
        n_features=3,
        cell=cell,
        hidden_size=5,
        num_layers=1,
        bidirectional=True,
        dense_layers=(),
        n_outputs=2,
    )
    x = jax.random.normal(jax.random.key(2), (4, 7, 3))
    fwd, bwd = rnn.cells[0]

    def last_state(c, seq):
        h0 = jnp.zeros(5)
        carry = (h0, h0) if cell == "lstm" else h0
        for t in range(seq.shape[0]):
            carry = c(seq[t], carry)
        return carry[0] if cell == "lstm" else carry

    ref = jnp.stack([jnp.concatenate([last_state(fwd, s), last_state(bwd, s[::-1])]) for s in x])
    head = rnn.head.layers[0]
    np.testing.assert_allclose(rnn(x, ())[0], ref @ head.weight.T + head.bias, rtol=1e-5, atol=1e-6)


def test_cnn_convolves_as_equinox_does_and_padding_never_reaches_batch_norm():
    cnn = _net(
        nn.CNN,
        sample_shape=(6, 6, 2),
        conv_layers=((4, 3),),
        pool_size=1,
        dense_layers=(),
        n_outputs=3,
        activation="identity",
        batch_norm=True,
    )
    x = jax.random.normal(jax.random.key(3), (5, 6, 6, 2))
    conv = cnn.convs[0]
    same = eqx.nn.Conv2d(2, 4, 3, padding=1, key=jax.random.key(0))
    same = eqx.tree_at(lambda c: (c.weight, c.bias), same, (conv.weight, conv.bias))
    per_sample = jax.vmap(same)(jnp.moveaxis(x, -1, 1))  # equinox: channels first
    np.testing.assert_allclose(
        cnn._convolve(conv, x), jnp.moveaxis(per_sample, 1, -1), rtol=1e-5, atol=1e-5
    )
    state = nn.initial_state(cnn)
    weight = jnp.array([1.0, 1.0, 1.0, 0.0, 0.0])
    padded = x.at[3:].set(1e6)  # garbage in the padding rows
    _, a = cnn(x, state, train=True, weight=weight)
    _, b = cnn(padded, state, train=True, weight=weight)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-6)


def test_wide_part_gives_every_crossed_pair_its_own_weight():
    def net(buckets):
        return _net(
            nn.WideDeep,
            n_features=2,
            categorical=(0, 1),
            cardinalities=(3, 4),
            crosses=((0, 1),),
            hash_buckets=buckets,
            embedding_dim=2,
            hidden=(4,),
            n_outputs=1,
            activation="relu",
        )

    pairs = jnp.array([[a, b] for a in range(3) for b in range(4)], jnp.float32)
    exact, hashed = net(1000), net(5)
    assert exact.wide_tables[-1].shape == (12, 1) and hashed.wide_tables[-1].shape == (5, 1)
    codes = exact._codes(pairs)
    assert len(set(np.asarray(exact._cross(codes, (0, 1))).tolist())) == 12
    assert set(np.asarray(hashed._cross(codes, (0, 1))).tolist()) == set(range(5))


def test_wrapped_modules_switch_dropout_off_for_inference():
    module = eqx.nn.Sequential([eqx.nn.Linear(4, 4, key=jax.random.key(0)), eqx.nn.Dropout(0.5)])
    wrapped = nn.wrap_module(module, (4,), 4, key=jax.random.key(1))
    x = jnp.ones((3, 4))
    np.testing.assert_array_equal(wrapped(x, ())[0], wrapped(x, ())[0])
    trained, _ = wrapped(x, (), key=jax.random.key(2), train=True)
    assert (trained == 0).any()
    with pytest.raises(ValueError, match="to 4 values .* need 2 outputs"):
        nn.wrap_module(module, (4,), 2, key=jax.random.key(1))
