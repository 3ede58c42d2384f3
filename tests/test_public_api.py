import modelzip


def test_public_surface_is_small_and_explicit():
    assert sorted(modelzip.__all__) == sorted(
        [
            "Context",
            "MethodConfig",
            "ModelzipError",
            "Recipe",
            "compress",
            "evaluate",
            "load",
            "load_data",
            "load_model",
            "register",
            "save",
        ]
    )
    for name in modelzip.__all__:
        assert getattr(modelzip, name) is not None
