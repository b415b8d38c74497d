"""The fixed names inside an artifact folder: its manifest and the manifest's detached signature."""

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
UNHASHED = (MANIFEST, SIGNATURE)
