"""The kinship index: sketches of many models of one family in one file (docs/index.md).

One module per concept: ``query`` (pure: one model against thousands, screened ranking),
``family_tree`` (pure: merges and fine-tunes inferred from layer-group sketches), ``file``
(the SQLite adapter), ``api`` (:class:`Index`: reading models, adding, querying).

Example:
    >>> import os, tempfile
    >>> from kinmerge.index import Index
    >>> idx = Index(os.path.join(tempfile.mkdtemp(), "family.kmi"))
    >>> len(idx.add(["zoo:add", "zoo:sort", "zoo:count"], base="zoo:base").added)
    3
    >>> [(n.label, round(n.value, 2)) for n in idx.query("zoo:add", top=2)]
    [('zoo:count', 0.06), ('zoo:sort', -0.01)]
    >>> idx.close()
"""

from kinmerge.index.api import AddResult, Index, IndexMismatchError, Neighbour
from kinmerge.index.family_tree import FamilyTree, Relation, TreeSettings, infer_tree
from kinmerge.index.file import IndexFile, IndexFileError

__all__ = ["AddResult", "FamilyTree", "Index", "IndexFile", "IndexFileError", "IndexMismatchError", "Neighbour",
           "Relation", "TreeSettings", "infer_tree"]
