"""``python -m gateway.integrations.npc``: the NPC bridge (see ``gateway.integrations.npc.bridge``)."""

import sys

from gateway.integrations.npc.bridge import main

sys.exit(main())
