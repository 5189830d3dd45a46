"""Repository-level pytest settings only: the plugin itself loads through its pytest11 entry point."""

# The unit tests drive the plugin's hooks in throw-away projects (STYLE.md section 8);
# pytest accepts pytest_plugins only in the rootdir's conftest.
pytest_plugins = ["pytester"]
