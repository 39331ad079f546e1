"""Importing this module registers every architecture (each model module registers itself on import)."""

from maskcd.models import maskcd  # noqa: F401
from maskcd.models import minenetcd  # noqa: F401
from maskcd.models.zoo import fc_ef, siamunet_conc, siamunet_diff  # noqa: F401
from maskcd.models.zoo import snunet  # noqa: F401
from maskcd.models.zoo import bit  # noqa: F401
from maskcd.models.zoo import changeformer  # noqa: F401
from maskcd.models.zoo import a2net  # noqa: F401
from maskcd.models.zoo import tinycd  # noqa: F401
from maskcd.models.zoo import dminet  # noqa: F401
from maskcd.models.zoo import mspsnet  # noqa: F401
from maskcd.models.zoo import resunet  # noqa: F401
from maskcd.models.zoo import cgnet  # noqa: F401
from maskcd.models.zoo import hcgmnet  # noqa: F401
from maskcd.models.zoo import rdpnet  # noqa: F401
from maskcd.models.zoo import fcnpp  # noqa: F401
from maskcd.models.zoo import dtcdscn  # noqa: F401
from maskcd.models.zoo import tfi_gr  # noqa: F401
from maskcd.models.zoo import afcf3d  # noqa: F401
from maskcd.models.zoo import icifnet  # noqa: F401
from maskcd.models.zoo import ussfcnet  # noqa: F401
from maskcd.models.zoo import dsamnet  # noqa: F401
from maskcd.models.zoo import dsifn  # noqa: F401
from maskcd.models.zoo import aernet  # noqa: F401
from maskcd.models import ucd  # noqa: F401  (registers the UCD checkpoint loader)
from maskcd.models.zoo import hanet  # noqa: F401
from maskcd.models.zoo import swinsunet  # noqa: F401
