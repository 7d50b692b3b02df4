#!/usr/bin/env python3
"""Writes the committed seed inputs of ember's fuzz targets (fuzz/seeds/TARGET/*), in the byte
layouts each target's module doc describes. Run from anywhere: python3 fuzz/seeds/make_seeds.py.
Seeds are few and small; the fuzzer grows its own corpus (fuzz/corpus/, not committed)."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def u8(v): return struct.pack('<B', v)
def u16(v): return struct.pack('<H', v)
def u32(v): return struct.pack('<I', v)
def u64(v): return struct.pack('<Q', v)
def blob(b): return u16(len(b)) + b


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)


def http(method, path, body=None):
    head = f'{method} {path} HTTP/1.1\r\nHost: localhost\r\n'
    if body is None:
        return (head + '\r\n').encode()
    b = json.dumps(body).encode()
    return (head + f'Content-Type: application/json\r\nContent-Length: {len(b)}\r\n\r\n').encode() + b


# api_http: what a client sends down the socket.
write('api_http', 'get_root', http('GET', '/'))
write('api_http', 'configure_and_start',
      http('PUT', '/machine-config', {'vcpu_count': 2, 'mem_size_mib': 256})
      + http('PUT', '/boot-source', {'kernel_image_path': '/k', 'boot_args': 'console=ttyS0'})
      + http('PUT', '/drives/rootfs', {'drive_id': 'rootfs', 'path_on_host': '/r', 'is_root_device': True,
                                       'is_read_only': False})
      + http('PUT', '/network-interfaces/eth0', {'iface_id': 'eth0', 'host_dev_name': 'tap0'})
      + http('PUT', '/actions', {'action_type': 'InstanceStart'}))
write('api_http', 'mmds_and_patch',
      http('PUT', '/mmds', {'latest': {'a': 1}}) + http('PATCH', '/mmds', {'latest': {'b': [1, 2]}})
      + http('PATCH', '/vm', {'state': 'Paused'}) + http('GET', '/vm/config')
      + http('GET', '/machine-config'))
write('api_http', 'malformed', b'PUT /drives/x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello')

# config_file: a Firecracker-style configuration.
config = {
    'boot-source': {'kernel_image_path': '/k', 'initrd_path': '/i', 'boot_args': 'console=ttyS0'},
    'machine-config': {'vcpu_count': 2, 'mem_size_mib': 128, 'smt': False},
    'drives': [{'drive_id': 'rootfs', 'path_on_host': '/r', 'is_root_device': True, 'is_read_only': True,
                'rate_limiter': {'bandwidth': {'size': 1000, 'refill_time': 100}}}],
    'network-interfaces': [{'iface_id': 'eth0', 'host_dev_name': 'tap0', 'guest_mac': '06:00:00:00:00:01'}],
    'vsock': {'guest_cid': 3, 'uds_path': '/v.sock'},
    'entropy': {},
    'mmds-config': {'version': 'V2', 'network_interfaces': ['eth0'], 'ipv4_address': '169.254.169.250'},
    'logger': {'log_path': '/l', 'level': 'Info'},
}
write('config_file', 'full.json', json.dumps(config, indent=1).encode())
write('config_file', 'minimal.json', json.dumps({'boot-source': {'kernel_image_path': '/k'}}).encode())
write('config_file', 'unsupported.json', json.dumps(
    {'boot-source': {'kernel_image_path': '/k'}, 'balloon': {'amount_mib': 1},
     'machine-config': {'vcpu_count': 1, 'mem_size_mib': 64, 'track_dirty_pages': True}}).encode())


# kernel_loader: kernel (u32 length + bytes), initrd (u32 length + bytes), command line.
def elf(entry=0x100000, paddr=0x100000, payload=b'\xf4' * 64):
    ehdr = b'\x7fELF' + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr += struct.pack('<HHIQQQIHHHHHH', 2, 0x3e, 1, entry, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    off = 64 + 56
    phdr = struct.pack('<IIQQQQQQ', 1, 7, off, paddr, paddr, len(payload), len(payload), 0x1000)
    return ehdr + phdr + payload


def bzimage(xloadflags=1):
    img = bytearray(0x400)  # the boot sector and one setup sector
    img[0x1f1] = 1  # setup_sects
    img[0x1fe:0x200] = b'\x55\xaa'
    img[0x202:0x206] = b'HdrS'
    img[0x206:0x208] = u16(0x20f)  # protocol 2.15
    img[0x211] = 1  # loadflags: LOADED_HIGH
    img[0x214:0x218] = u32(0x100000)  # code32_start
    img[0x230:0x234] = u32(0x200000)  # kernel_alignment
    img[0x236:0x238] = u16(xloadflags)
    return bytes(img) + b'\x90' * 512


def boot(kernel, initrd, cmdline):
    return u32(len(kernel)) + kernel + u32(len(initrd)) + initrd + cmdline


write('kernel_loader', 'elf', boot(elf(), b'initrd' * 8, b'console=ttyS0 reboot=k'))
write('kernel_loader', 'bzimage', boot(bzimage(), b'\x00' * 64, b'console=ttyS0'))
write('kernel_loader', 'bzimage_32bit', boot(bzimage(0), b'', b'quiet'))
write('kernel_loader', 'neither', boot(b'MZ' + bytes(100), b'x', b''))

# virtio targets: buffers are at DATA + offset; a chain is count-1, then per descriptor
# offset (u16), length (u16), flags (bit 0 writable).
def chain(*descs):
    out = u8(len(descs) - 1)
    for off, length, w in descs:
        out += u16(off) + u16(length) + u8(1 if w else 0)
    return out


def fill_at(entries, size=0x400):
    """A data-area fill with bytes placed at offsets (the fill repeats over the area)."""
    buf = bytearray(size)
    for off, b in entries:
        buf[off:off + len(b)] = b
    return blob(bytes(buf))


# virtio_blk: headers at 0x0 (IN sector 1), 0x10 (OUT sector 2), 0x20 (FLUSH), 0x30 (GET_ID),
# 0x40 (DISCARD), 0x50 (WRITE_ZEROES); segments for discard at 0x80; data at 0x100; status 0x3f0.
blk_fill = fill_at([(0x0, u32(0) + u32(0) + u64(1)), (0x10, u32(1) + u32(0) + u64(2)),
                    (0x20, u32(4) + u32(0) + u64(0)), (0x30, u32(8) + u32(0) + u64(0)),
                    (0x40, u32(11) + u32(0) + u64(0)), (0x50, u32(13) + u32(0) + u64(0)),
                    (0x80, u64(4) + u32(8) + u32(0))])
write('virtio_blk', 'read_write', blk_fill + u8(2) + u64(0)
      + u8(0) + chain((0x0, 16, 0), (0x100, 512, 1), (0x3f0, 1, 1))
      + u8(0) + chain((0x10, 16, 0), (0x100, 1024, 0), (0x3f1, 1, 1)) + u8(2))
write('virtio_blk', 'flush_id', blk_fill + u8(2) + u64(0)
      + u8(0) + chain((0x20, 16, 0), (0x3f0, 1, 1))
      + u8(0) + chain((0x30, 16, 0), (0x200, 20, 1), (0x3f1, 1, 1)) + u8(1) + u8(4))
write('virtio_blk', 'discard_zeroes', blk_fill + u8(2) + u64(0)
      + u8(0) + chain((0x40, 16, 0), (0x80, 16, 0), (0x3f0, 1, 1))
      + u8(0) + chain((0x50, 16, 0), (0x80, 16, 0), (0x3f1, 1, 1)) + u8(2))
write('virtio_blk', 'uring_read_only', blk_fill + u8(5) + u64(0)
      + u8(0) + chain((0x10, 16, 0), (0x100, 512, 0), (0x3f0, 1, 1))
      + u8(0) + chain((0x0, 16, 0), (0x100, 4096, 1), (0x3f1, 1, 1)) + u8(2))

# virtio_net: a 12-byte virtio-net header then an Ethernet frame at 0x0 (to a host) and at
# 0x100 (an ARP request for the MMDS address).
guest_mac = bytes([6, 1, 2, 3, 4, 5])
eth_ipv4 = b'\xff' * 6 + guest_mac + b'\x08\x00' + bytes([0x45, 0, 0, 28]) + bytes(4) + bytes([64, 17, 0, 0]) \
    + bytes([172, 16, 0, 2, 172, 16, 0, 1]) + bytes(8)
arp = b'\xff' * 6 + guest_mac + b'\x08\x06' + bytes([0, 1, 8, 0, 6, 4, 0, 1]) + guest_mac \
    + bytes([172, 16, 0, 2]) + bytes(6) + bytes([169, 254, 169, 254])
vnet = bytes(12)
csum_vnet = bytes([1, 0]) + u16(0) + u16(0) + u16(34) + u16(6) + u16(0)
net_fill = fill_at([(0x0, vnet + eth_ipv4), (0x100, vnet + arp), (0x200, csum_vnet + eth_ipv4)])
write('virtio_net', 'tx_rx', net_fill + u8(0) + u64(0)
      + u8(1) + chain((0x0, 12 + len(eth_ipv4), 0)) + u8(4) + u8(8)
      + u8(0) + chain((0x1000, 2048, 1)) + u8(2) + blob(vnet + eth_ipv4) + u8(3) + u8(8))
write('virtio_net', 'mmds_arp', net_fill + u8(1) + u64(0)
      + u8(0) + chain((0x1000, 1024, 1), (0x2000, 1024, 1)) + u8(1) + chain((0x100, 12, 0), (0x10c, len(arp), 0))
      + u8(4) + u8(8) + u8(3) + u8(8))
write('virtio_net', 'csum_no_mrg', net_fill + u8(0) + u64(1 << 15)
      + u8(1) + chain((0x200, 12 + len(eth_ipv4), 0)) + u8(5) + u8(4) + u8(1) + u8(5) + u8(4) + u8(1)
      + u8(2) + blob(bytes(12) + eth_ipv4 * 3) + u8(0) + chain((0x1000, 64, 1), (0x2000, 64, 1)) + u8(3) + u8(1))


# vsock: packet headers at 0x0 (REQUEST to host port 1234), 0x40 (RW with 4 payload bytes at
# 0x80), 0xc0 (SHUTDOWN), 0x100 (RST), 0x140 (CREDIT_REQUEST).
def vhdr(op, length=0, flags=0, src_port=1000, dst_port=1234):
    return u64(3) + u64(2) + u32(src_port) + u32(dst_port) + u32(length) + u16(1) + u16(op) + u32(flags) \
        + u32(65536) + u32(0)


vs_fill = fill_at([(0x0, vhdr(1)), (0x40, vhdr(5, 4)), (0x80, b'ping'), (0xc0, vhdr(4, 0, 3)),
                   (0x100, vhdr(3)), (0x140, vhdr(7))])
write('vsock', 'request_rw', vs_fill + u8(0) + chain((0x1000, 4096, 1)) + u8(1) + chain((0x0, 44, 0))
      + u8(1) + chain((0x40, 44, 0), (0x80, 4, 0)) + u8(3) + u8(16) + u8(0) + chain((0x2000, 44, 1), (0x3000, 64, 1))
      + u8(3) + u8(16))
write('vsock', 'shutdown_rst', vs_fill + u8(0) + chain((0x1000, 4096, 1)) + u8(1) + chain((0x140, 44, 0))
      + u8(1) + chain((0xc0, 44, 0)) + u8(1) + chain((0x100, 44, 0)) + u8(3) + u8(16))
write('vsock', 'host_connect', vs_fill + u8(4) + blob(b'CONNECT 52\n') + u8(3) + u8(4)
      + u8(0) + chain((0x1000, 44, 1)) + u8(0) + chain((0x2000, 128, 1)) + u8(3) + u8(4)
      + u8(4) + blob(b'CONNECT x\n') + u8(3) + u8(4))

# virtio_mmio: a driver's initialization, with the rings at 0x0/0x100/0x200 and the fill
# (which starts at 0x4000) holding descriptors pointing into it.
def w(off, v, width=4):
    return u8(1) + u16(off) + u8({1: 0, 2: 1, 4: 2, 8: 3}[width]) + u64(v)


def rd(off, width=4):
    return u8(0) + u16(off) + u8({1: 0, 2: 1, 4: 2, 8: 3}[width])


init = w(0x70, 1) + w(0x70, 3) + w(0x14, 1) + rd(0x10) + w(0x24, 1) + w(0x20, 1) + w(0x70, 11) \
    + w(0x30, 0) + rd(0x34) + w(0x38, 16) + w(0x80, 0x4000) + w(0x84, 0) + w(0x90, 0x4100) + w(0x94, 0) \
    + w(0xa0, 0x4200) + w(0xa4, 0) + w(0x44, 1) + w(0x70, 15)
desc = u64(0x5000) + u32(64) + u16(2) + u16(0)
mmio_fill = fill_at([(0x0, desc), (0x100, u16(0) + u16(1) + u16(0))], 0x400)
write('virtio_mmio', 'init_and_notify', mmio_fill + init + w(0x50, 0) + u8(2) + u8(4) + rd(0x60) + w(0x64, 1))
write('virtio_mmio', 'reset_and_config', mmio_fill + init + w(0x70, 0) + rd(0x100, 1) + rd(0xfc) + w(0x70, 0x80)
      + rd(0x70) + init)
write('virtio_mmio', 'odd_widths', mmio_fill + rd(0x0, 1) + rd(0x2, 2) + w(0x70, 1, 2) + w(0x80, 1 << 40, 8) + rd(0x0, 8))


# pci_config: CONFIG_ADDRESS for 00:01.0, reads of its header; ECAM accesses to its BAR and
# command register; BAR accesses to the common configuration (at 0) and MSI-X table.
def cfg_addr(dev, reg):
    return u8(0) + u32(0x8000_0000 | dev << 11 | reg)


def ecam_w(dev, reg, v, width=4):
    return u8(4) + u32(dev << 15 | reg) + u8({1: 0, 2: 1, 4: 2, 8: 3}[width]) + u64(v)


def ecam_r(dev, reg, width=4):
    return u8(3) + u32(dev << 15 | reg) + u8({1: 0, 2: 1, 4: 2, 8: 3}[width])


def bar_w(off, v, width=4):
    return u8(6) + u16(off) + u8({1: 0, 2: 1, 4: 2, 8: 3}[width]) + u64(v)


def bar_r(off, width=4):
    return u8(5) + u16(off) + u8({1: 0, 2: 1, 4: 2, 8: 3}[width])


pci_fill = fill_at([(0x0, desc)])
write('pci_config', 'cf8_header', pci_fill + cfg_addr(1, 0) + u8(1) + u8(0) + u8(2) + cfg_addr(1, 0x34)
      + u8(1) + u8(0) + u8(0) + cfg_addr(1, 0x10) + u8(2) + u8(0) + u8(2) + u64(0xffff_ffff) + u8(1) + u8(0) + u8(2))
write('pci_config', 'ecam_bar_move', pci_fill + ecam_r(1, 0x10) + ecam_w(1, 0x10, 0xffff_ffff) + ecam_r(1, 0x10)
      + ecam_w(1, 0x10, 0x2000_0000) + ecam_w(1, 0x14, 0x20) + u8(7) + ecam_w(1, 0x14, 0x30) + ecam_w(1, 4, 6, 2))
write('pci_config', 'virtio_init', pci_fill + ecam_w(1, 4, 6, 2) + bar_w(0x14, 1, 1) + bar_w(0x14, 3, 1)
      + bar_w(0x8, 1) + bar_w(0xc, 1) + bar_w(0x14, 11, 1) + bar_w(0x16, 0, 2) + bar_w(0x18, 16, 2)
      + bar_w(0x1a, 0, 2) + bar_w(0x20, 0x4000, 8) + bar_w(0x28, 0x4100, 8) + bar_w(0x30, 0x4200, 8)
      + bar_w(0x1c, 1, 2) + bar_w(0x14, 15, 1) + bar_r(0x1e, 2) + u8(8) + u8(4) + bar_r(0x2000) + bar_w(0x2000, 0xfee0_0000))


# mmds_frames: flags, then frames (op 0), time (op 1), takes (op 2).
def ipv4_tcp(flags, seq=1000, ack=0, payload=b'', src=bytes([172, 16, 0, 2])):
    tcp = u16(40000)[::-1] + u16(80)[::-1] + u32(seq)[::-1] + u32(ack)[::-1] + bytes([0x50, flags]) \
        + u16(65535)[::-1] + bytes(4) + payload
    total = 20 + len(tcp)
    ip = bytes([0x45, 0, total >> 8, total & 0xff, 0, 1, 0x40, 0, 64, 6, 0, 0]) + src + bytes([169, 254, 169, 254])
    mmds_mac = bytes([0x06, 0x01, 0x23, 0x45, 0x67, 0x01])
    return mmds_mac + guest_mac + b'\x08\x00' + ip + tcp


get = b'GET /latest/meta-data/id HTTP/1.1\r\nAccept: application/json\r\n\r\n'
write('mmds_frames', 'arp', u8(0) + u8(0) + blob(arp) + u8(2) + u16(1514) + u8(2) + u16(20))
write('mmds_frames', 'tcp_syn_get', u8(0) + u8(0) + blob(ipv4_tcp(0x02)) + u8(2) + u16(1514)
      + u8(0) + blob(ipv4_tcp(0x18, 1001, 1, get)) + u8(1) + u16(10) + u8(2) + u16(1514) + u8(2) + u16(1514))
write('mmds_frames', 'v2_rst', u8(1) + u8(0) + blob(ipv4_tcp(0x02)) + u8(3) + u8(1) + u16(5000)
      + u8(0) + blob(ipv4_tcp(0x04, 1001)) + u8(1) + u16(60000) + u8(2) + u16(1514))

# The crash the target found: a SYN from 0.0.0.0 (smoltcp panicked answering it).
write('mmds_frames', 'syn_from_unspecified', u8(0) + u8(0) + blob(ipv4_tcp(0x02, src=bytes(4))) + u8(1) + u16(1)
      + u8(2) + u16(1514))

# mmds_http: flags, then the connection's bytes.
write('mmds_http', 'v1_get', u8(0) + get + b'GET /latest/ HTTP/1.0\r\n\r\n')
write('mmds_http', 'v2_token', u8(1) + b'PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n'
      + b'GET /latest/meta-data HTTP/1.1\r\nX-metadata-token: abc\r\n\r\n')
write('mmds_http', 'imds_bad', u8(2) + b'GET /latest/meta-data/n HTTP/1.1\r\n\r\n'
      + b'POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc' + b'GARBAGE\n\n')
