#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Addressing

/// Turns a host name or dotted-quad text into an IPv4 address (`getaddrinfo`).
public enum HostResolver {
    /// The first IPv4 address `host` resolves to (a dotted quad: itself).
    public static func resolveIPv4(_ host: String) -> IPv4Address? {
        resolveAllIPv4(host).first
    }
}

extension HostResolver {
    /// Every IPv4 address `host` resolves to, in the resolver's order, each once (a
    /// dotted quad: itself). Empty when it resolves to none.
    public static func resolveAllIPv4(_ host: String) -> [IPv4Address] {
        if let literal = try? IPv4Address(parsing: host) { return [literal] }
        var hints = addrinfo()
        hints.ai_family = AF_INET
        #if canImport(Glibc)
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        #else
        hints.ai_socktype = SOCK_DGRAM
        #endif
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &result) == 0 else { return [] }
        defer { freeaddrinfo(result) }
        var addresses: [IPv4Address] = []
        var entry = result
        while let current = entry {
            if let socketAddress = current.pointee.ai_addr, socketAddress.pointee.sa_family == sa_family_t(AF_INET) {
                let address = socketAddress.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                    IPv4Address(bits: UInt32(bigEndian: $0.pointee.sin_addr.s_addr))
                }
                if !addresses.contains(address) { addresses.append(address) }
            }
            entry = current.pointee.ai_next
        }
        return addresses
    }
}
