"""latkit's predictors as scikit-learn estimators, on latkit's own measurements and the HELP tables: the numeric
regressors pass check_estimator; the arch-string models clone, tune, cross-validate and sit in Pipelines; a
second fit starts afresh; few-shot transfer keeps its pretraining through clone."""
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import Lasso
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import estimator_checks_generator

from latkit.collector import LatkitError
from latkit.collector.dataset import HELP_DIR
from latkit.collector.spaces import get_space
from conftest import ROOT
from latkit.predictor.data import LatencyTable
from latkit.predictor.models import MODELS, ArchRegressor, load, make_model
from latkit.predictor.regressors import ForestRegressor, GBDTRegressor, MLPRegressor, RidgeRegressor
from latkit.predictor.transfer import FewShot, Pretrained, _best_line, _clipped


def small(kind, **params):
    """A model of `kind` sized for tests (the GNN trains 10 epochs)."""
    m = make_model(kind, "nb201", random_state=3, n_jobs=1)
    return m.set_params(epochs=10, **params) if kind == "gnn" else m.set_params(**params)


@pytest.fixture(scope="module")
def own():
    """latkit's own 200 nb201 measurements (datasets/local-cpu-nb201-fbnet)."""
    table = LatencyTable(ROOT / "datasets" / "local-cpu-nb201-fbnet", "nb201")
    archs = table.archs("local")
    return archs, table.latency("local", archs)


def _checks():
    """scikit-learn's estimator checks for each numeric regressor, less the array-API check: the regressors
    take numpy arrays (their state is numpy), and that check runs only with SCIPY_ARRAY_API=1 set before
    scipy is imported (otherwise it skips)."""
    for est in (RidgeRegressor(), GBDTRegressor(n_estimators=50, n_jobs=1), ForestRegressor(n_estimators=50, n_jobs=1),
                MLPRegressor(hidden_layer_sizes=(16,))):
        for est, check in estimator_checks_generator(est):
            name = getattr(check, "func", check).__name__
            if name != "check_array_api_input":
                yield pytest.param(est, check, id=f"{type(est).__name__}-{name}")


@pytest.mark.parametrize("estimator, check", list(_checks()))
def test_numeric_regressors_pass_check_estimator(estimator, check):
    check(estimator)


@pytest.mark.parametrize("kind", MODELS)
def test_params_clone_and_a_second_fit_from_scratch(kind, own):
    """get_params/set_params/clone see every hyperparameter; a clone is unfitted; fitting a model that was
    fitted before gives exactly what a fresh model gives (no warm start)."""
    archs, y = own
    m = small(kind)
    params = m.get_params()
    assert params["space"] == "nb201" and params.get("random_state", params.get("regressor__random_state", 3)) == 3
    assert clone(m).get_params().keys() == params.keys() and repr(clone(m)) == repr(m)
    m.fit(archs[:100], y[:100])
    with pytest.raises(NotFittedError):
        clone(m).predict(archs[:3])
    again = m.fit(archs[100:], y[100:]).predict(archs[:50])
    fresh = small(kind).fit(archs[100:], y[100:]).predict(archs[:50])
    assert np.allclose(again, fresh, rtol=1e-5), np.abs(again / fresh - 1).max()
    m.set_params(**({"hidden": 32} if kind == "gnn" else {"encoding": "onehot"}))
    assert m.get_params()["hidden" if kind == "gnn" else "encoding"] in (32, "onehot")


def test_cross_val_score_is_the_fold_loop(own):
    """cross_val_score on arch strings gives the scores of fitting and scoring each fold by hand."""
    archs, y = own
    cv = KFold(5, shuffle=True, random_state=0)
    got = cross_val_score(small("ridge"), archs, y, cv=cv)
    by_hand = [small("ridge").fit([archs[i] for i in tr], y[tr]).score([archs[i] for i in te], y[te])
               for tr, te in cv.split(archs)]
    assert np.allclose(got, by_hand) and got.mean() > 0.6, got


def test_grid_search_and_pipeline(own):
    """GridSearchCV tunes nested regressor parameters and the encoding (FLOPs and per-layer costs beat
    one-hot ops alone); a Pipeline that canonicalises arch strings first predicts as the model alone."""
    archs, y = own
    grid = GridSearchCV(small("gbdt"), {"regressor__n_estimators": [20, 200], "encoding": ["onehot", "features"]},
                        cv=3).fit(archs, y)
    assert len(grid.cv_results_["params"]) == 4 and grid.best_params_["encoding"] == "features"
    assert grid.best_estimator_.predict(archs[:5]).shape == (5,)
    space = get_space("nb201")
    pipe = make_pipeline(FunctionTransformer(lambda X: [space.validate(a) for a in X]), small("rf"))
    pipe.fit(archs[:150], y[:150])
    assert np.array_equal(pipe.predict(archs[150:]), small("rf").fit(archs[:150], y[:150]).predict(archs[150:]))
    assert np.isfinite(cross_val_score(small("gnn"), archs, y, cv=3)).all()


def test_gnn_threads_are_its_own(own):
    """torch_threads sets torch's threads for the GNN's work only: the process keeps its setting."""
    archs, y = own
    before = torch.get_num_threads()
    small("gnn", torch_threads=before + 1).fit(archs, y).predict(archs)
    assert torch.get_num_threads() == before


def test_few_shot_keeps_pretraining_through_clone(tmp_path):
    """FewShot on a frozen Pretrained: clone (cross_val_score) keeps the pretraining; an arch is predicted
    the same alone or with the pool, and by the model loaded from its file; an unfrozen, cloned Pretrained is
    one clear error."""
    table = LatencyTable(HELP_DIR / "fbnet_latency.parquet", "fbnet")
    archs = table.common_archs(["raspi4"])[:1000]
    pre = Pretrained("fbnet", source_samples=200, gnn_steps=50, n_jobs=1).fit(table, ["pixel3", "1080ti_1"], archs)
    chosen = pre.choose(20)
    y = table.latency("raspi4", chosen)
    model = FewShot(FrozenEstimator(pre)).fit(chosen, y)
    assert np.allclose(model.predict(archs[:5]), model.predict(archs)[:5])
    assert np.array_equal(clone(model).fit(chosen, y).predict(archs), model.predict(archs))
    scores = cross_val_score(FewShot(FrozenEstimator(pre)), chosen, y, cv=4)
    assert np.isfinite(scores).all()
    model.save(tmp_path / "f.latkit-model")  # the three views, their scales and weights travel in the file
    loaded, (mean, std) = load(tmp_path / "f.latkit-model"), model.predict(archs[:50], return_std=True)
    assert all(np.allclose(a, b) for a, b in zip(loaded.predict(archs[:50], return_std=True), (mean, std)))
    with pytest.raises(LatkitError, match=r"needs pretraining done: give FewShot\(FrozenEstimator"):
        clone(FewShot(pre)).fit(chosen, y)


def test_bad_inputs_are_one_line(own, tmp_path):
    archs, y = own
    m = small("ridge")
    for X, match in ((archs[0], "X is one string"), ([1.5, 2.5], "holds 1.5, which is no arch string"),
                     (np.array([archs[:2], archs[2:4]]), r"X has shape \(2, 2\)")):
        with pytest.raises(LatkitError, match=match):
            m.fit(X, y[:2])
    for model in (m, small("gnn")):
        with pytest.raises(LatkitError, match="10 archs but 9 latencies"):
            model.fit(archs[:10], y[:9])
    with pytest.raises(LatkitError, match="one positive finite number per arch"):
        m.fit(archs[:3], [1.0, 0.0, 2.0])
    with pytest.raises(LatkitError, match="invalid nb201 arch"):
        m.fit(archs[:2] + ["|conv~0|"], y[:3])
    with pytest.raises(LatkitError, match="cannot save a model around Lasso: only latkit's regressors"):
        ArchRegressor("nb201", Lasso()).fit(archs, y).save(tmp_path / "m.latkit-model")
    assert not (tmp_path / "m.latkit-model").exists()


def test_few_shot_line_and_clipping():
    """The line view takes the one feature the target is a straight function of, not a noise column that fits
    the samples by chance; a sample 10x slow is clipped to the median + 2 robust standard deviations."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(20, 28))
    y = 0.5 + 2.0 * feats[:, 7] + rng.normal(scale=0.05, size=20)
    col, line = _best_line(feats, y)
    assert col == 7 and abs(line[1] - 2.0) < 0.1
    log_y = np.log(np.r_[np.full(10, 30.0), np.full(9, 40.0), 400.0])
    assert _clipped(log_y)[-1] < np.log(60) and np.array_equal(_clipped(log_y)[:-1], log_y[:-1])
