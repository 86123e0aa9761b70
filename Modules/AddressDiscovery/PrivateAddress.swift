#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Addressing

/// Finds the address this host uses on its LAN: its "private address".
///
/// The seed's trick: "connect" a UDP socket towards the server and read the local address
/// the kernel chose. No packet is sent (connecting a UDP socket only picks a route). When
/// that fails (no route yet), the first non-loopback IPv4 interface address is used.
public enum PrivateAddress {
    /// Why no private address could be found.
    public enum DiscoveryError: Error, Hashable, Sendable {
        case socket(errno: Int32)
        case connect(errno: Int32)
        case noInterfaceAddress
    }

    /// The local address the kernel would use to reach `destination`; interface
    /// enumeration when routing gives no answer.
    public static func discover(towards destination: Endpoint) throws(DiscoveryError) -> IPv4Address {
        do {
            return try routedSourceAddress(towards: destination)
        } catch {
            if let first = interfaceAddresses().first(where: { !$0.isLoopback }) ?? interfaceAddresses().first {
                return first.address
            }
            throw .noInterfaceAddress
        }
    }

    /// The seed's trick alone: the source address of a UDP socket connected to `destination`.
    public static func routedSourceAddress(towards destination: Endpoint) throws(DiscoveryError) -> IPv4Address {
        #if canImport(Glibc)
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        #else
        let fd = socket(AF_INET, SOCK_DGRAM, 0)
        #endif
        guard fd >= 0 else { throw .socket(errno: errno) }
        defer { close(fd) }
        var remote = sockaddr_in()
        remote.sin_family = sa_family_t(AF_INET)
        remote.sin_port = destination.port.bigEndian
        remote.sin_addr.s_addr = destination.address.bits.bigEndian
        let connected = withUnsafePointer(to: &remote) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { throw .connect(errno: errno) }
        var local = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { throw .connect(errno: errno) }
        return IPv4Address(bits: UInt32(bigEndian: local.sin_addr.s_addr))
    }

    /// One IPv4 address of a network interface.
    public struct InterfaceAddress: Hashable, Sendable {
        public var interface: String
        public var address: IPv4Address
        public var isLoopback: Bool
    }

    /// Every IPv4 address on this host's interfaces that are up, non-loopback first.
    public static func interfaceAddresses() -> [InterfaceAddress] {
        var head: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&head) == 0, let first = head else { return [] }
        defer { freeifaddrs(head) }
        var result: [InterfaceAddress] = []
        var cursor: UnsafeMutablePointer<ifaddrs>? = first
        while let current = cursor {
            defer { cursor = current.pointee.ifa_next }
            let flags = Int32(bitPattern: current.pointee.ifa_flags)
            guard let socketAddress = current.pointee.ifa_addr, socketAddress.pointee.sa_family == sa_family_t(AF_INET),
                  flags & Int32(IFF_UP) != 0
            else { continue }
            let address = socketAddress.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                IPv4Address(bits: UInt32(bigEndian: $0.pointee.sin_addr.s_addr))
            }
            let name = String(cString: current.pointee.ifa_name)
            result.append(InterfaceAddress(interface: name, address: address, isLoopback: flags & Int32(IFF_LOOPBACK) != 0))
        }
        return result.sorted { !$0.isLoopback && $1.isLoopback }
    }
}
