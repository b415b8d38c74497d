"""An artifact folder's layout: its fixed file names (the manifest's fields are contract.Manifest's)."""

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
UNHASHED = (MANIFEST, SIGNATURE)
