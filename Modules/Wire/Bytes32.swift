/// 32 bytes held inline (no heap block): a public key, a session key. Compared and hashed by
/// value; shorter input is zero-padded, longer is cut.
public struct Bytes32: Hashable, Sendable {
    @usableFromInline var w0, w1, w2, w3: UInt64

    // Inlinable so that callers in other modules get it specialised for their collection type
    // (unspecialised, walking a generic collection allocated per byte).
    @inlinable
    public init(_ bytes: some Collection<UInt8>) {
        (w0, w1, w2, w3) = (0, 0, 0, 0)
        withUnsafeMutableBytes(of: &self) { raw in
            for (index, byte) in bytes.prefix(32).enumerated() { raw[index] = byte }
        }
    }

    /// The bytes as an array.
    public var array: [UInt8] { withUnsafeBytes { Array($0) } }

    /// The 32 bytes, in order.
    public func withUnsafeBytes<Result>(_ body: (UnsafeRawBufferPointer) throws -> Result) rethrows -> Result {
        var copy = self
        return try Swift.withUnsafeBytes(of: &copy) { try body($0) }
    }
}
