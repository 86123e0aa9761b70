// natchat's view of miniupnpc 2.2.4 (Debian: libminiupnpc-dev): the client side of UPnP IGD
// (SSDP discovery, the device description, SOAP actions). Only static inline helpers here:
// a system library target has no C sources of its own.
#ifndef NATCHAT_CMINIUPNPC_SHIM_H
#define NATCHAT_CMINIUPNPC_SHIM_H

#include <miniupnpc/miniupnpc.h>
#include <miniupnpc/upnpcommands.h>
#include <miniupnpc/upnperrors.h>

/// The WANIPConnection (or WANPPPConnection) service type UPNP_GetValidIGD picked; the
/// field is a fixed-size char array, which Swift sees as a tuple.
static inline const char *natchat_igd_service_type(const struct IGDdatas *data) {
    return data->first.servicetype;
}

/// miniupnpc's API version, to check at run time against the header's.
static inline int natchat_miniupnpc_api_version(void) {
    return MINIUPNPC_API_VERSION;
}

#endif
