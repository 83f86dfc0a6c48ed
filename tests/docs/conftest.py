from tests.support.space import sandbox_space, tiny_model_dir  # noqa: F401 - fixtures
