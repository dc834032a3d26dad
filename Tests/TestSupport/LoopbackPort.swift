import Foundation

/// TCP sockets on ephemeral loopback ports, for tests that need a port of their own.
public enum LoopbackPort {
    /// A socket bound to 127.0.0.1 port 0 (listening when `listening`), and the port the kernel
    /// gave it; the caller closes the descriptor. Nil when the socket cannot be made.
    public static func bind(listening: Bool) -> (fd: Int32, port: Int)? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.bind(fd, $0, length) == 0 && (!listening || listen(fd, 16) == 0)
                    && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else {
            close(fd)
            return nil
        }
        return (fd, Int(UInt16(bigEndian: addr.sin_port)))
    }

    /// A port that was free a moment ago (bound, then released); 0 when none could be bound.
    public static func free() -> Int {
        guard let socket = bind(listening: false) else { return 0 }
        close(socket.fd)
        return socket.port
    }
}
