"""SAPNet proposal selector: PSM/PRM MIL math, PDG, PNPG, BMS and the selection stage."""
