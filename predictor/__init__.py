"""latkit's predictors: encodings, scikit-learn latency models, ESM-style fitting, NASFLAT-style transfer, metrics.

    from latkit.predictor.esm import fit
    surrogate, report, test_archs = fit("my-data", "nb201", "pi4", budget=500)
    surrogate.predict(["|nor_conv_3x3~0|+|...|"])

    from latkit.predictor.models import load, make_model          # scikit-learn estimators on arch strings
    cross_val_score(make_model("gbdt", "nb201"), archs, latency_ms, cv=5)
    load("nb201-pi4.latkit-model").predict(archs)                  # a saved model of any kind

Layers: predictor imports collector (spaces, samplers, datasets, errors); collector never imports predictor,
except the CLI's collector/cli_predictor.py, which imports it inside its commands. Inside predictor/ imports
go one way: pipelines -> models.py (the registry of kinds) -> the kinds -> base.py (docs/ARCHITECTURE.md).
"""
