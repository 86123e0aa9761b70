import Addressing
#if UPnP
import CMiniupnpc
#endif

/// A UPnP Internet Gateway Device found on the LAN, through miniupnpc (Debian's
/// libminiupnpc-dev 2.2.4). UPnP is SSDP discovery, an XML device description over HTTP and
/// SOAP actions: too much to write again, and miniupnpc is maintained (2.2.4 is from 2022).
///
/// Every call blocks (sockets with timeouts inside miniupnpc): use it from one dedicated
/// serial queue, never from an event loop. The type owns miniupnpc's C state, so it is
/// used from that one queue only (hence `@unchecked Sendable`: it is handed to the queue,
/// never shared).
public final class UPnPGateway: @unchecked Sendable {
    /// Why no IGD is usable.
    public enum Failure: Error, Hashable, Sendable, CustomStringConvertible {
        /// No answer to SSDP discovery, or no device that is an IGD.
        case noIGD
        /// natchat was built without the UPnP trait (no miniupnpc).
        case notBuilt
        /// An action failed: miniupnpc's code (a UPnP error such as 718, or negative: its own).
        case action(String, code: Int32)

        public var description: String {
            switch self {
            case .noIGD: "no IGD"
            case .notBuilt: "not built"
            case .action(let name, let code): "\(name) failed (\(code))"
            }
        }
    }

    #if UPnP
    private var urls: UPNPUrls
    private var data: IGDdatas
    #endif
    /// Our LAN address as miniupnpc saw it while fetching the description (the
    /// AddPortMapping internal client).
    public let lanAddress: String

    #if UPnP
    private init(urls: UPNPUrls, data: IGDdatas, lanAddress: String) {
        self.urls = urls
        self.data = data
        self.lanAddress = lanAddress
    }

    deinit { FreeUPNPUrls(&urls) }
    #else
    private init() { lanAddress = "" }
    #endif

    /// SSDP discovery (waiting up to `delayMilliseconds` for answers), then the first
    /// valid IGD (connected or not). Blocks.
    public static func discover(delayMilliseconds: Int32, onlyIGD: Bool = false) -> Result<UPnPGateway, Failure> {
        #if UPnP
        var error: Int32 = 0
        let devices: UnsafeMutablePointer<UPNPDev>?
        if onlyIGD {
            devices = upnpDiscoverDevice("urn:schemas-upnp-org:device:InternetGatewayDevice:1", delayMilliseconds, nil, nil, 0, 0, 2, &error)
        } else {
            devices = upnpDiscover(delayMilliseconds, nil, nil, 0, 0, 2, &error)
        }
        guard let devices else { return .failure(.noIGD) }
        defer { freeUPNPDevlist(devices) }
        var urls = UPNPUrls()
        var data = IGDdatas()
        var lan = [CChar](repeating: 0, count: 64)
        let status = UPNP_GetValidIGD(devices, &urls, &data, &lan, Int32(lan.count))
        // 1: a connected IGD; 2: an IGD that says it is not connected (still worth asking);
        // 3: some other UPnP device (its URLs are filled in and must be freed).
        guard status == 1 || status == 2 else {
            if status != 0 { FreeUPNPUrls(&urls) }
            return .failure(.noIGD)
        }
        let address = lan.withUnsafeBufferPointer { buffer in
            String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        return .success(UPnPGateway(urls: urls, data: data, lanAddress: address))
        #else
        return .failure(.notBuilt)
        #endif
    }

    /// The gateway's external IPv4 address (GetExternalIPAddress). Blocks.
    public func externalAddress() -> Result<IPv4Address, Failure> {
        #if UPnP
        var text = [CChar](repeating: 0, count: 40)
        let code = UPNP_GetExternalIPAddress(urls.controlURL, natchat_igd_service_type(&data), &text)
        guard code == 0 else { return .failure(.action("GetExternalIPAddress", code: code)) }
        let string = text.withUnsafeBufferPointer { buffer in
            String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        guard let address = try? IPv4Address(parsing: string) else { return .failure(.action("GetExternalIPAddress", code: -4)) }
        return .success(address)
        #else
        return .failure(.notBuilt)
        #endif
    }

    /// AddPortMapping for UDP `externalPort` → our `internalPort`, for `leaseSeconds`
    /// (also a renewal: the same call again). Blocks.
    public func addMapping(externalPort: UInt16, internalPort: UInt16, leaseSeconds: UInt32) -> Result<UInt16, Failure> {
        #if UPnP
        let code = UPNP_AddPortMapping(urls.controlURL, natchat_igd_service_type(&data), "\(externalPort)", "\(internalPort)",
                                       lanAddress, "natchat", "UDP", nil, "\(leaseSeconds)")
        guard code == 0 else { return .failure(.action("AddPortMapping", code: code)) }
        return .success(externalPort)
        #else
        return .failure(.notBuilt)
        #endif
    }

    /// AddAnyPortMapping (IGDv2): the gateway picks the external port. Blocks.
    public func addAnyMapping(internalPort: UInt16, leaseSeconds: UInt32) -> Result<UInt16, Failure> {
        #if UPnP
        var reserved = [CChar](repeating: 0, count: 8)
        let code = UPNP_AddAnyPortMapping(urls.controlURL, natchat_igd_service_type(&data), "\(internalPort)", "\(internalPort)",
                                          lanAddress, "natchat", "UDP", nil, "\(leaseSeconds)", &reserved)
        guard code == 0 else { return .failure(.action("AddAnyPortMapping", code: code)) }
        let text = reserved.withUnsafeBufferPointer { buffer in
            String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        guard let port = UInt16(text) else { return .failure(.action("AddAnyPortMapping", code: -4)) }
        return .success(port)
        #else
        return .failure(.notBuilt)
        #endif
    }

    /// DeletePortMapping for UDP `externalPort`. Blocks.
    @discardableResult
    public func deleteMapping(externalPort: UInt16) -> Result<Void, Failure> {
        #if UPnP
        let code = UPNP_DeletePortMapping(urls.controlURL, natchat_igd_service_type(&data), "\(externalPort)", "UDP", nil)
        return code == 0 ? .success(()) : .failure(.action("DeletePortMapping", code: code))
        #else
        return .failure(.notBuilt)
        #endif
    }
}
