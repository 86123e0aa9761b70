#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The shell's folders under the XDG base directories: one reading of the environment and
/// one way to make them, for the history file and the status socket alike.
enum ClientFolders {
    /// An environment variable's value; `nil` when it is unset or empty (the XDG base
    /// directory specification treats an empty value as unset).
    static func environment(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
    }

    /// Makes each missing component of the absolute path `folder`, owner-only (0700);
    /// components that exist are left as they are (the caller checks the last one when it
    /// must be private).
    static func makeFolders(_ folder: String) {
        var path = ""
        for component in folder.split(separator: "/") {
            path += "/" + component
            mkdir(path, 0o700)
        }
    }
}
